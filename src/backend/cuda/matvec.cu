// Decode matrix-vector products: each warp takes kRowsPerWarp weight rows, each lane decoding whole chunks of a
// row into registers and dotting them with up to kMaxMatvecTokens activation rows, which the block stages in
// shared memory a tile at a time (read from global memory, the lanes' chunk-strided reads were uncoalesced and
// made the kernel L1-bound). Up to three matrices of one type and width (e.g. Wq, Wk, Wv) share one launch.
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dequant.cuh"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;
constexpr int kTileCols = 2048;  // columns of x staged in shared memory at a time (a multiple of every chunk)
constexpr int kSharedBytes = kMaxMatvecTokens * (kTileCols + kTileCols / 8 * 4) * static_cast<int>(sizeof(float));

struct MatvecLaunch {
  MatvecJob jobs[kMaxMatvecJobs];
  int block_start[kMaxMatvecJobs + 1];  // first block of each job
  int n_jobs;
};

// Where column e of a tile lives in shared memory: each lane reads one chunk as consecutive float4s, so chunks
// are padded by 16 bytes to put the 8 lanes of a 128-bit access phase on different banks.
template <int kChunk>
__device__ __forceinline__ int padded(int e) {
  return kChunk >= 8 ? e + (e / kChunk) * 4 : e;
}

template <GgmlType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    matvec_kernel(const MatvecLaunch launch, const float* __restrict__ x, int64_t ldx, int n_tokens) {
  constexpr int kChunk = Chunk<T>::kSize;
  extern __shared__ float4 shared_x4[];
  float* xs = reinterpret_cast<float*>(shared_x4);
  const int block = blockIdx.x;
  const int j = launch.n_jobs > 1 && block >= launch.block_start[1] ? (launch.n_jobs > 2 && block >= launch.block_start[2] ? 2 : 1) : 0;
  const MatvecJob job = j == 0 ? launch.jobs[0] : j == 1 ? launch.jobs[1] : launch.jobs[2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first_row = static_cast<int64_t>(block - launch.block_start[j]) * kRowsPerBlock + warp * kRowsPerWarp;
  const int64_t n_cols = job.w.n_cols;
  const int tile_stride = padded<kChunk>(kTileCols);

  // Ask for every weight byte of this warp's rows up front, into L2: the DRAM latency then overlaps the staging
  // of x and the arithmetic instead of following them (the kernel was latency-bound with few bytes in flight).
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (first_row + r < job.w.n_rows) {
      const uint8_t* w = job.w.data + (first_row + r) * job.w.row_bytes;
      for (size_t offset = lane * 128; offset < job.w.row_bytes; offset += 32 * 128) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(w + offset));
      }
    }
  }

  float acc[kRowsPerWarp][kMaxMatvecTokens] = {};
  for (int64_t tile0 = 0; tile0 < n_cols; tile0 += kTileCols) {
    const int tile_len = n_cols - tile0 < kTileCols ? static_cast<int>(n_cols - tile0) : kTileCols;
    __syncthreads();
    for (int i = threadIdx.x * 4; i < tile_len * n_tokens; i += kWarpsPerBlock * 32 * 4) {
      const int t = i / tile_len, e = i % tile_len;
      *reinterpret_cast<float4*>(xs + t * tile_stride + padded<kChunk>(e)) =
          *reinterpret_cast<const float4*>(x + t * ldx + tile0 + e);
    }
    __syncthreads();
    const int64_t chunk0 = tile0 / kChunk;
    const int n_chunks = tile_len / kChunk;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = first_row + r;
      if (row >= job.w.n_rows) break;
      const uint8_t* w = job.w.data + row * job.w.row_bytes;
      for (int c = lane; c < n_chunks; c += 32) {
        float v[kChunk];
        Chunk<T>::load(w, chunk0 + c, v);
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

}  // namespace

namespace {

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
  int blocks;
  const float* x;
  int64_t ldx;
  int n_tokens;
  cudaStream_t stream;
  template <GgmlType T>
  void operator()() const {
    // Shared memory beyond 48 KiB must be asked for, once per kernel.
    static const cudaError_t configured =
        cudaFuncSetAttribute(matvec_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
    check_cuda(configured, "cudaFuncSetAttribute(matvec_kernel)");
    const int tile_floats = Chunk<T>::kSize >= 8 ? kTileCols + kTileCols / Chunk<T>::kSize * 4 : kTileCols;
    const size_t shared = static_cast<size_t>(n_tokens) * tile_floats * sizeof(float);
    matvec_kernel<T><<<blocks, kWarpsPerBlock * 32, shared, stream>>>(*launch, x, ldx, n_tokens);
  }
};

}  // namespace

bool supports_type(GgmlType type) { return dispatch_type(type, NoOp{}); }

int column_granule(GgmlType type) {
  int granule = 0;
  dispatch_type(type, GranuleOf{&granule});
  return granule;
}

void matvec(const MatvecJob* jobs, int n_jobs, const float* x, int64_t ldx, int n_tokens, cudaStream_t stream) {
  if (n_jobs < 1 || n_jobs > kMaxMatvecJobs || n_tokens < 1 || n_tokens > kMaxMatvecTokens) {
    throw std::runtime_error("matvec: bad job or token count");
  }
  MatvecLaunch launch{};
  launch.n_jobs = n_jobs;
  int blocks = 0;
  for (int j = 0; j < n_jobs; ++j) {
    if (jobs[j].w.type != jobs[0].w.type || jobs[j].w.n_cols != jobs[0].w.n_cols) {
      throw std::runtime_error("matvec: the matrices of one launch must share type and width");
    }
    launch.jobs[j] = jobs[j];
    launch.block_start[j] = blocks;
    blocks += static_cast<int>((jobs[j].w.n_rows + kRowsPerBlock - 1) / kRowsPerBlock);
  }
  launch.block_start[n_jobs] = blocks;
  const bool known = dispatch_type(jobs[0].w.type, LaunchMatvec{&launch, blocks, x, ldx, n_tokens, stream});
  if (!known) {
    throw std::runtime_error("the CUDA backend has no kernel for weight type " +
                             std::string(ggml_type_name(jobs[0].w.type)));
  }
  check_launch("matvec_kernel");
}

}  // namespace tessera::cuda
