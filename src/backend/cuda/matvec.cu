// Decode matrix-vector products for the weight types without an integer kernel (matvec_q8.cu has those): each
// warp takes kRowsPerWarp weight rows, each lane decoding whole chunks of a row into registers and dotting them
// with up to kMaxMatvecTokens f32 activation rows, which the block stages in shared memory a tile at a time (read
// from global memory, the lanes' chunk-strided reads were uncoalesced and made the kernel L1-bound). Up to three
// matrices of one type and width (e.g. Wq, Wk, Wv) share one launch.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dequant.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/matvec_jobs.cuh"
#include "backend/cuda/matvec_q8.h"

namespace tessera::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;
constexpr int kSharedBytes = 96 * 1024;  // x staging: whole rows of x for one token up to ~21k columns
constexpr int kBlocksPerSm = 2;

struct MatvecLaunch {
  MatvecGroups groups;  // of kRowsPerBlock rows
  int tile_cols;        // columns of x staged at a time; >= n_cols means x is staged once per block
};

// Where column e of a tile lives in shared memory: each lane reads one chunk as consecutive float4s, so chunks
// are padded by 16 bytes to put the 8 lanes of a 128-bit access phase on different banks.
template <int kChunk>
__device__ __forceinline__ int padded(int e) {
  return kChunk >= 8 ? e + (e / kChunk) * 4 : e;
}

template <int kChunk>
__device__ void stage_x(float* xs, int tile_stride, const float* x, int64_t ldx, int n_tokens, int64_t tile0,
                        int tile_len) {
  for (int i = threadIdx.x * 4; i < tile_len * n_tokens; i += kWarpsPerBlock * 32 * 4) {
    const int t = i / tile_len, e = i % tile_len;
    *reinterpret_cast<float4*>(xs + t * tile_stride + padded<kChunk>(e)) =
        *reinterpret_cast<const float4*>(x + t * ldx + tile0 + e);
  }
}

// L2 prefetch of a row group's weights, so that DRAM latency overlaps the work on the group before it.
__device__ __forceinline__ void prefetch_group(const MatvecLaunch& launch, int group, int warp, int lane) {
  const int j = job_of(launch.groups, group);
  const MatvecJob& job = launch.groups.jobs[j];
  const int64_t first_row =
      static_cast<int64_t>(group - launch.groups.group_start[j]) * kRowsPerBlock + warp * kRowsPerWarp;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (first_row + r < job.w.n_rows) {
      const uint8_t* w = job.w.data + (first_row + r) * job.w.row_bytes;
      for (size_t offset = lane * 128; offset < job.w.row_bytes; offset += 32 * 128) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(w + offset));
      }
    }
  }
}

// A persistent grid: each block walks row groups (kRowsPerBlock rows, each warp kRowsPerWarp of them), so the
// activations are staged into shared memory once per block when a whole row of x fits.
template <GgmlType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    matvec_kernel(const MatvecLaunch launch, const float* __restrict__ x, int64_t ldx, int n_tokens) {
  constexpr int kChunk = Chunk<T>::kSize;
  extern __shared__ float4 shared_x4[];
  float* xs = reinterpret_cast<float*>(shared_x4);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n_cols = launch.groups.jobs[0].w.n_cols;
  const int tile_cols = launch.tile_cols;
  const bool single_tile = tile_cols >= n_cols;
  const int tile_stride = padded<kChunk>(tile_cols);
  const int n_groups = launch.groups.group_start[launch.groups.n_jobs];

  if (static_cast<int>(blockIdx.x) < n_groups) prefetch_group(launch, blockIdx.x, warp, lane);
  allow_next_kernel();
  wait_for_previous_kernel();
  if (single_tile) {
    stage_x<kChunk>(xs, tile_stride, x, ldx, n_tokens, 0, static_cast<int>(n_cols));
    __syncthreads();
  }
  for (int group = blockIdx.x; group < n_groups; group += gridDim.x) {
    if (group + static_cast<int>(gridDim.x) < n_groups) prefetch_group(launch, group + gridDim.x, warp, lane);
    const int j = job_of(launch.groups, group);
    const MatvecJob job = job_at(launch.groups, j);
    const int64_t first_row =
        static_cast<int64_t>(group - launch.groups.group_start[j]) * kRowsPerBlock + warp * kRowsPerWarp;

    float acc[kRowsPerWarp][kMaxMatvecTokens] = {};
    for (int64_t tile0 = 0; tile0 < n_cols; tile0 += tile_cols) {
      const int tile_len = n_cols - tile0 < tile_cols ? static_cast<int>(n_cols - tile0) : tile_cols;
      if (!single_tile) {
        __syncthreads();
        stage_x<kChunk>(xs, tile_stride, x, ldx, n_tokens, tile0, tile_len);
        __syncthreads();
      }
      const int64_t chunk0 = tile0 / kChunk;
      const int n_chunks = tile_len / kChunk;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int64_t row = first_row + r;
        if (row >= job.w.n_rows) break;
        const uint8_t* w = job.w.data + row * job.w.row_bytes;
        for (int c = lane; c < n_chunks; c += 32) {
          float v[kChunk];
          Chunk<T>::load(w, n_cols, chunk0 + c, v);
#pragma unroll
          for (int t = 0; t < kMaxMatvecTokens; ++t) {
            if (t < n_tokens) {
              const float4* xv = reinterpret_cast<const float4*>(xs + t * tile_stride + padded<kChunk>(c * kChunk));
              float sum = 0;
#pragma unroll
              for (int i = 0; i < kChunk / 4; ++i) {
                const float4 xi = xv[i];
                sum += v[4 * i] * xi.x + v[4 * i + 1] * xi.y + v[4 * i + 2] * xi.z + v[4 * i + 3] * xi.w;
              }
              acc[r][t] += sum;
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = first_row + r;
#pragma unroll
      for (int t = 0; t < kMaxMatvecTokens; ++t) {
        if (t < n_tokens && row < job.w.n_rows) {
          float s = acc[r][t];
#pragma unroll
          for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, offset);
          if (lane == 0) {
            float* out = job.y + t * job.ldy + row;
            *out = job.accumulate ? *out + s : s;
          }
        }
      }
    }
  }
}

int multiprocessor_count() {
  static const int count = [] {
    int device = 0, n = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return n;
  }();
  return count;
}

struct NoOp {
  template <GgmlType T>
  void operator()() const {}
};

struct GranuleOf {
  int* granule;
  template <GgmlType T>
  void operator()() const {
    *granule = Chunk<T>::kSize;
  }
};

struct LaunchMatvec {
  const MatvecLaunch* launch;
  const float* x;
  int64_t ldx;
  int n_tokens;
  cudaStream_t stream;
  template <GgmlType T>
  void operator()() const {
    // The integer kernels serve these types; matvec() never gets here with them.
    if constexpr (!has_q8_kernel(T)) launch_f32<T>();
  }
  template <GgmlType T>
  void launch_f32() const {
    constexpr int kChunk = Chunk<T>::kSize;
    // Shared memory beyond 48 KiB must be asked for, once per kernel.
    static const cudaError_t configured =
        cudaFuncSetAttribute(matvec_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
    check_cuda(configured, "cudaFuncSetAttribute(matvec_kernel)");
    // The widest tile (a multiple of 256 columns, or the whole row) whose padded rows of x fit.
    const int64_t n_cols = launch->groups.jobs[0].w.n_cols;
    const int64_t budget = kSharedBytes / (static_cast<int64_t>(sizeof(float)) * n_tokens);  // floats per token
    int64_t tile = kChunk >= 8 ? budget * kChunk / (kChunk + 4) : budget;  // padding: 4 floats per chunk
    tile = tile >= n_cols ? n_cols : tile / 256 * 256;
    MatvecLaunch l = *launch;
    l.tile_cols = static_cast<int>(tile);
    const int tile_floats = kChunk >= 8 ? l.tile_cols + l.tile_cols / kChunk * 4 : l.tile_cols;
    const size_t shared = static_cast<size_t>(n_tokens) * tile_floats * sizeof(float);
    const int groups = l.groups.group_start[l.groups.n_jobs];
    const int grid = std::min(groups, kBlocksPerSm * multiprocessor_count());
    launch_chained("matvec_kernel", matvec_kernel<T>, dim3(grid), dim3(kWarpsPerBlock * 32), shared, stream, l, x, ldx,
                   n_tokens);
  }
};

// Whether a fused norm's scale (if any) fits a launch whose rows are n_cols wide.
bool norm_scale_fits(const NormScale& norm, int64_t n_cols) {
  return !norm.sums || (norm.n == n_cols && norm.n <= kMaxFusedNormWidth);
}

}  // namespace

bool supports_type(GgmlType type) { return dispatch_type(type, NoOp{}); }

int column_granule(GgmlType type) {
  int granule = 0;
  dispatch_type(type, GranuleOf{&granule});
  return granule;
}

bool matvec_reads_q8(GgmlType type) { return has_q8_kernel(type); }

bool matvec_mixes_types(GgmlType first, GgmlType second, int64_t n_cols, int n_tokens) {
  return matvec_q8_mixes(first, second, n_cols, n_tokens);
}

bool matvec_fuses_norm(const DeviceMatrix& w) {
  return has_q8_kernel(w.type) && w.n_rows % kQ8Block == 0 && w.n_rows <= kMaxFusedNormWidth;
}

void matvec_norm(const MatvecJob& job, const Q8Rows& xq, int n_tokens, const NormOutput& norm, cudaStream_t stream) {
  if (n_tokens < 1 || n_tokens > kMaxMatvecTokens) throw std::runtime_error("matvec_norm: bad token count");
  if (!matvec_fuses_norm(job.w) || !job.accumulate) {
    throw std::runtime_error("matvec_norm: needs an integer-kernel type, whole Q8 blocks of rows and accumulate");
  }
  if (!xq.q || xq.ld != job.w.n_cols || !norm.q8.q || norm.q8.ld != job.w.n_rows) {
    throw std::runtime_error("matvec_norm: bad Q8 input or output");
  }
  matvec_q8_norm(job, xq, n_tokens, norm, stream);
}

bool matvec_fuses_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up) {
  return has_q8_kernel(gate.type) && up.type == gate.type && up.n_rows == gate.n_rows && up.n_cols == gate.n_cols &&
         gate.n_rows % kQ8Block == 0;
}

void matvec_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const Q8Rows& xq, const NormScale& norm,
                   const Q8Rows& out, cudaStream_t stream) {
  if (!matvec_fuses_swiglu(gate, up)) {
    throw std::runtime_error("matvec_swiglu: needs two matrices of one integer-kernel type and shape, whole Q8 blocks "
                             "of rows");
  }
  if (!xq.q || xq.ld != gate.n_cols || !out.q || out.ld != gate.n_rows || out.q == xq.q) {
    throw std::runtime_error("matvec_swiglu: bad Q8 input or output");
  }
  if (!norm_scale_fits(norm, gate.n_cols)) throw std::runtime_error("matvec_swiglu: bad fused-norm width");
  matvec_q8_swiglu(gate, up, xq, norm, out, stream);
}

void matvec(const MatvecJob* jobs, int n_jobs, const float* x, int64_t ldx, const Q8Rows& xq, int n_tokens,
            cudaStream_t stream, const NormScale& norm) {
  if (n_jobs < 1 || n_jobs > kMaxMatvecJobs || n_tokens < 1 || n_tokens > kMaxMatvecTokens) {
    throw std::runtime_error("matvec: bad job or token count");
  }
  const GgmlType type = jobs[0].w.type;
  int second_type_job = 1;  // the first job of another type than jobs[0], if any
  while (second_type_job < n_jobs && jobs[second_type_job].w.type == type) ++second_type_job;
  const bool mixed = second_type_job < n_jobs;
  for (int j = second_type_job + 1; j < n_jobs; ++j) {
    if (jobs[j].w.type != jobs[second_type_job].w.type) {
      throw std::runtime_error("matvec: the matrices of one launch switch type more than once");
    }
  }
  if (mixed && !matvec_mixes_types(type, jobs[second_type_job].w.type, jobs[0].w.n_cols, n_tokens)) {
    throw std::runtime_error("matvec: these weight types cannot share a launch");
  }
  if (mixed || has_q8_kernel(type)) {
    if (!xq.q || xq.ld != jobs[0].w.n_cols) throw std::runtime_error("matvec: this weight type needs x as Q8Rows");
    if (!norm_scale_fits(norm, jobs[0].w.n_cols)) throw std::runtime_error("matvec: bad fused-norm width");
    if (mixed) {
      matvec_q8_mixed(jobs, n_jobs, second_type_job, xq, norm, stream);
    } else {
      matvec_q8(jobs, n_jobs, xq, n_tokens, norm, stream);
    }
    return;
  }
  if (norm.sums) throw std::runtime_error("matvec: a fused RMSNorm needs an integer-kernel weight type");
  MatvecLaunch launch{make_matvec_groups(jobs, n_jobs, kRowsPerBlock), 0};
  if (!dispatch_type(type, LaunchMatvec{&launch, x, ldx, n_tokens, stream})) {
    throw std::runtime_error("the CUDA backend has no kernel for weight type " + std::string(ggml_type_name(type)));
  }
}

}  // namespace tessera::cuda
