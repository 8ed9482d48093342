// RoPE on the new queries and keys, fused with writing the keys and values into their KV-cache slots.
// Angles follow the CPU reference exactly: theta starts at the position and is multiplied by theta_scale once
// per pair, in float.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

__device__ void rotate_pair(float* head, int i, const RopeParams& p, int32_t position) {
  float theta = static_cast<float>(position);
  for (int k = 0; k < i; ++k) theta *= p.theta_scale;
  const float factor = p.freq_factors ? p.freq_factors[i] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float s, c;
  sincosf(angle, &s, &c);
  const float x0 = head[2 * i], x1 = head[2 * i + 1];
  head[2 * i] = x0 * c - x1 * s;
  head[2 * i + 1] = x0 * s + x1 * c;
}

__global__ void rope_store_kernel(const RopeParams p, float* __restrict__ q, float* __restrict__ k,
                                  const float* __restrict__ v, const int32_t* __restrict__ positions,
                                  const int32_t* __restrict__ slots, void* k_cache, void* v_cache, bool f16_cache) {
  const int t = blockIdx.x;
  const int32_t pos = positions[t];
  const int n_pairs = p.n_dims / 2;
  const int q_dim = p.n_head * p.head_dim, kv_dim = p.n_head_kv * p.head_dim;
  float* qt = q + static_cast<int64_t>(t) * q_dim;
  float* kt = k + static_cast<int64_t>(t) * kv_dim;
  for (int i = threadIdx.x; i < (p.n_head + p.n_head_kv) * n_pairs; i += blockDim.x) {
    const int h = i / n_pairs, pair = i % n_pairs;
    float* head = h < p.n_head ? qt + h * p.head_dim : kt + (h - p.n_head) * p.head_dim;
    rotate_pair(head, pair, p, pos);
  }
  __syncthreads();
  const int64_t base = static_cast<int64_t>(slots[t]) * kv_dim;
  const float* vt = v + static_cast<int64_t>(t) * kv_dim;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    if (f16_cache) {
      static_cast<__half*>(k_cache)[base + i] = __float2half_rn(kt[i]);
      static_cast<__half*>(v_cache)[base + i] = __float2half_rn(vt[i]);
    } else {
      static_cast<float*>(k_cache)[base + i] = kt[i];
      static_cast<float*>(v_cache)[base + i] = vt[i];
    }
  }
}

}  // namespace

void rope_and_store_kv(const RopeParams& p, float* q, float* k, const float* v, const int32_t* positions,
                       const int32_t* slots, int n_tokens, void* k_cache, void* v_cache, bool f16_cache,
                       cudaStream_t stream) {
  if (n_tokens == 0) return;
  rope_store_kernel<<<n_tokens, 256, 0, stream>>>(p, q, k, v, positions, slots, k_cache, v_cache, f16_cache);
  check_launch("rope_store_kernel");
}

}  // namespace tessera::cuda
