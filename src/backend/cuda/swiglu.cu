// SwiGLU: out = silu(gate) * up, elementwise; for decode also out quantized (Q8Rows), each warp's 32 consecutive
// values being one block.
#include <stdexcept>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/q8.cuh"

namespace tessera::cuda {
namespace {

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                              __half* __restrict__ out16, const Q8Rows q8, int64_t count) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // With q8, count is a multiple of 32: whole warps leave here, and the others quantize together.
  if (i >= count) return;
  const float g = gate[i];
  const float v = silu(g) * up[i];
  out[i] = v;
  if (out16) out16[i] = __float2half_rn(v);
  if (q8.q) quantize_q8_block(v, q8, i / q8.ld, (i % q8.ld) / kQ8Block, static_cast<int>(threadIdx.x % 32));
}

}  // namespace

void swiglu(const float* gate, const float* up, float* out, __half* out16, const Q8Rows& q8, int64_t count,
            cudaStream_t stream) {
  if (count == 0) return;
  if (q8.q && (q8.ld % kQ8Block != 0 || count % q8.ld != 0)) {
    throw std::runtime_error("swiglu: bad width for the Q8 output");
  }
  launch_chained("swiglu_kernel", swiglu_kernel, dim3(static_cast<unsigned>((count + 255) / 256)), dim3(256), 0, stream,
                 gate, up, out, out16, q8, count);
}

}  // namespace tessera::cuda
