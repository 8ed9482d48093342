// Activation functions of the kernels that apply them, in one place so that the fused and the stand-alone paths
// compute them with the same expression and round alike.
#pragma once

namespace tessera::cuda {

// silu(g) = g * sigmoid(g), written as the CPU reference (cpu::swiglu) writes it.
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

}  // namespace tessera::cuda
