// Decode matrix-vector products: one warp per weight row, each lane decoding whole chunks of the row into
// registers and dotting them with up to kMaxMatvecTokens activation rows; up to three matrices of one type and
// width (e.g. Wq, Wk, Wv) share one launch.
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dequant.cuh"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

struct MatvecLaunch {
  MatvecJob jobs[kMaxMatvecJobs];
  int block_start[kMaxMatvecJobs + 1];  // first block of each job
  int n_jobs;
};

template <GgmlType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    matvec_kernel(const MatvecLaunch launch, const float* __restrict__ x, int64_t ldx, int n_tokens) {
  constexpr int kChunk = Chunk<T>::kSize;
  int j = 0;
  while (j + 1 < launch.n_jobs && static_cast<int>(blockIdx.x) >= launch.block_start[j + 1]) ++j;
  const MatvecJob& job = launch.jobs[j];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x - launch.block_start[j]) * kWarpsPerBlock + warp;
  if (row >= job.w.n_rows) return;

  const uint8_t* w = job.w.data + row * job.w.row_bytes;
  const int64_t n_chunks = job.w.n_cols / kChunk;
  float acc[kMaxMatvecTokens] = {};
  for (int64_t c = lane; c < n_chunks; c += 32) {
    float v[kChunk];
    Chunk<T>::load(w, c, v);
#pragma unroll
    for (int t = 0; t < kMaxMatvecTokens; ++t) {
      if (t < n_tokens) {
        const float4* xv = reinterpret_cast<const float4*>(x + t * ldx + c * kChunk);
        float sum = 0;
#pragma unroll
        for (int i = 0; i < kChunk / 4; ++i) {
          const float4 xi = xv[i];
          sum += v[4 * i] * xi.x + v[4 * i + 1] * xi.y + v[4 * i + 2] * xi.z + v[4 * i + 3] * xi.w;
        }
        acc[t] += sum;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxMatvecTokens; ++t) {
    if (t < n_tokens) {
      float s = acc[t];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, offset);
      if (lane == 0) {
        float* out = job.y + t * job.ldy + row;
        *out = job.accumulate ? *out + s : s;
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
    matvec_kernel<T><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(*launch, x, ldx, n_tokens);
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
    blocks += static_cast<int>((jobs[j].w.n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
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
