// RMSNorm, one block per row; the sum of squares is kept in double like the CPU reference. For decode it also
// writes the row quantized (Q8Rows): each warp's 32 consecutive outputs are one block, so this costs a few shuffles
// instead of a kernel launch.
#include <stdexcept>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/q8.cuh"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rms_norm_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                const float* __restrict__ weight, float* __restrict__ y, __half* __restrict__ y16,
                                const Q8Rows q8, int n, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + (rows ? rows[r] : r) * static_cast<int64_t>(n);
  double sum = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) sum += static_cast<double>(xr[i]) * xr[i];
  __shared__ double partial[kThreads / 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  const float scale = 1.0f / sqrtf(static_cast<float>(total / n) + eps);
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const float v = (xr[i] * scale) * weight[i];
    y[r * n + i] = v;
    if (y16) y16[r * n + i] = __float2half_rn(v);
    // n is a multiple of 32 when q8 is wanted, so every lane of the warp takes part.
    if (q8.q) quantize_q8_block(v, q8, r, i / kQ8Block, static_cast<int>(threadIdx.x % 32));
  }
}

}  // namespace

void rms_norm(const float* x, const int32_t* rows, const float* weight, float* y, __half* y16, const Q8Rows& q8,
              int64_t n_rows, int n, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  if (q8.q && (n % kQ8Block != 0 || q8.ld != n)) throw std::runtime_error("rms_norm: bad width for the Q8 output");
  rms_norm_kernel<<<static_cast<unsigned>(n_rows), kThreads, 0, stream>>>(x, rows, weight, y, y16, q8, n, eps);
  check_launch("rms_norm_kernel");
}

}  // namespace tessera::cuda
