// Activation rows to Q8Rows for the integer decode kernels, for inputs no other kernel quantizes on the way
// (the attention output); one warp per 32-value block.
#include <stdexcept>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/q8.cuh"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void quantize_q8_kernel(const float* __restrict__ x, int64_t ldx, int64_t n_values, Q8Rows out) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  // n_values is a multiple of 32, so a warp is either wholly in range or wholly out.
  if (i >= n_values) return;
  const int64_t row = i / out.ld, col = i % out.ld;
  quantize_q8_block(x[row * ldx + col], out, row, col / kQ8Block, static_cast<int>(threadIdx.x % 32));
}

}  // namespace

void quantize_q8(const float* x, int64_t ldx, int n_rows, const Q8Rows& out, cudaStream_t stream) {
  if (out.ld % kQ8Block != 0 || out.ld > ldx) throw std::runtime_error("quantize_q8: bad row width");
  const int64_t n_values = static_cast<int64_t>(n_rows) * out.ld;
  if (n_values == 0) return;
  launch_chained("quantize_q8_kernel", quantize_q8_kernel,
                 dim3(static_cast<unsigned>((n_values + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream, x, ldx,
                 n_values, out);
}

}  // namespace tessera::cuda
