// RMSNorm, one block per row; the sum of squares is kept in double like the CPU reference. A decode step has one
// row per token, so one block does the whole row: each thread keeps its few values in registers, loading them all
// at once (a loop of dependent passes over the row was a chain of memory round trips:
// docs/notes/2026-11-26-cuda-integer-decode-h200.md), and
// loads its norm weights before waiting for the previous kernel. The block is the smallest of 256 x 8, 512 x 8 and
// 1024 x 16 (threads x values) that holds the row: fewer warps, fewer partial sums to add after the barrier. For
// decode it also writes the row quantized (Q8Rows): each warp's 32 consecutive outputs are one block, so this
// costs a few shuffles instead of a launch.
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/q8.cuh"

namespace tessera::cuda {
namespace {

constexpr int kMaxValues = 16384;  // 1024 threads x 16 values

template <int kThreads, int kValuesPerThread>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows, const float* __restrict__ weight,
                    float* __restrict__ y, __half* __restrict__ y16, const Q8Rows q8, int n, float eps) {
  constexpr int kWarps = kThreads / 32;
  float w[kValuesPerThread];
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) {
    const int i = threadIdx.x + k * kThreads;
    w[k] = i < n ? weight[i] : 0.0f;
  }
  allow_next_kernel();
  wait_for_previous_kernel();

  const int64_t r = blockIdx.x;
  const float* xr = x + (rows ? rows[r] : r) * static_cast<int64_t>(n);
  float v[kValuesPerThread];
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) {
    const int i = threadIdx.x + k * kThreads;
    v[k] = i < n ? xr[i] : 0.0f;
  }
  double sum = 0;
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) sum += static_cast<double>(v[k]) * v[k];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
  __shared__ double partial[kWarps];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) total += partial[i];
  const float scale = 1.0f / sqrtf(static_cast<float>(total / n) + eps);

#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) {
    const int i = threadIdx.x + k * kThreads;
    // n is a multiple of 32 when q8 is wanted, so i < n holds for all lanes of a warp or for none.
    if (i < n) {
      const float out = (v[k] * scale) * w[k];
      y[r * n + i] = out;
      if (y16) y16[r * n + i] = __float2half_rn(out);
      if (q8.q) quantize_q8_block(out, q8, r, i / kQ8Block, static_cast<int>(threadIdx.x % 32));
    }
  }
}

template <int kThreads, int kValuesPerThread>
void launch(const float* x, const int32_t* rows, const float* weight, float* y, __half* y16, const Q8Rows& q8,
            int64_t n_rows, int n, float eps, cudaStream_t stream) {
  launch_chained("rms_norm_kernel", rms_norm_kernel<kThreads, kValuesPerThread>, dim3(static_cast<unsigned>(n_rows)),
                 dim3(kThreads), 0, stream, x, rows, weight, y, y16, q8, n, eps);
}

}  // namespace

void rms_norm(const float* x, const int32_t* rows, const float* weight, float* y, __half* y16, const Q8Rows& q8,
              int64_t n_rows, int n, float eps, cudaStream_t stream) {
  if (n_rows == 0) return;
  if (n > kMaxValues) {
    throw std::runtime_error("rms_norm: rows of " + std::to_string(n) + " values are over the kernel's " +
                             std::to_string(kMaxValues));
  }
  if (q8.q && (n % kQ8Block != 0 || q8.ld != n)) throw std::runtime_error("rms_norm: bad width for the Q8 output");
  if (n <= 256 * 8) {
    launch<256, 8>(x, rows, weight, y, y16, q8, n_rows, n, eps, stream);
  } else if (n <= 512 * 8) {
    launch<512, 8>(x, rows, weight, y, y16, q8, n_rows, n, eps, stream);
  } else {
    launch<1024, 16>(x, rows, weight, y, y16, q8, n_rows, n, eps, stream);
  }
}

}  // namespace tessera::cuda
