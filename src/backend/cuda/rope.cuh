// Device side of RoPE, shared by the stand-alone RoPE + KV store kernel (prompt steps) and the decode attention
// kernel, which rotates its own queries and keys: the angle of pair i at a position, computed exactly as
// cpu::rope_angles does (theta starts at the position and is multiplied by theta_scale once per pair, in float).
#pragma once

#include "backend/cuda/kernels.h"

namespace tessera::cuda {

// (cos, sin) of pair i (i < n_dims / 2) at `position`.
__device__ __forceinline__ float2 rope_cos_sin(const RopeParams& p, int position, int i) {
  float theta = static_cast<float>(position);
  for (int m = 0; m < i; ++m) theta *= p.theta_scale;
  const float factor = p.freq_factors ? p.freq_factors[i] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float s, c;
  sincosf(angle, &s, &c);
  return make_float2(c, s);
}

// The pair (x0, x1) rotated by the angle whose (cos, sin) is cs.
__device__ __forceinline__ float2 rope_rotate(float2 x, float2 cs) {
  return make_float2(x.x * cs.x - x.y * cs.y, x.x * cs.y + x.y * cs.x);
}

}  // namespace tessera::cuda
