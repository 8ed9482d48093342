// Device side of Q8Rows (kernels.h): the quantization of one 32-value block by the 32 lanes of a warp, shared by
// the stand-alone quantize_q8 kernel and the kernels that fuse it (RMSNorm, SwiGLU). The rounding is the CPU
// engine's activation rounding (quant::quantize_activations for Q8_0/Q8_1: inverse scale 127 / amax, ties to
// even), so that both quantize a row to the same integers.
#pragma once

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace tessera::cuda {

// Lane i of the warp holds value i of block `block` of row `row`; every lane of the warp must call this.
__device__ __forceinline__ void quantize_q8_block(float v, const Q8Rows& out, int64_t row, int64_t block, int lane) {
  float amax = fabsf(v);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  const float d = amax / 127.0f;
  const float inverse = amax != 0.0f ? 127.0f / amax : 0.0f;
  const int q = __float2int_rn(v * inverse);
  int sum = q;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
  out.q[row * out.ld + block * kQ8Block + lane] = static_cast<int8_t>(q);
  if (lane == 0) out.ds[row * (out.ld / kQ8Block) + block] = make_float2(d, d * static_cast<float>(sum));
}

}  // namespace tessera::cuda
