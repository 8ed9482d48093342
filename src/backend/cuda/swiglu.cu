// SwiGLU: out = silu(gate) * up, elementwise.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                              __half* __restrict__ out16, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float g = gate[i];
  const float v = g / (1.0f + expf(-g)) * up[i];
  out[i] = v;
  if (out16) out16[i] = __float2half_rn(v);
}

}  // namespace

void swiglu(const float* gate, const float* up, float* out, __half* out16, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  swiglu_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(gate, up, out, out16, count);
  check_launch("swiglu_kernel");
}

}  // namespace tessera::cuda
