// RoPE on the new queries and keys, fused with writing the keys and values into their KV-cache slots (prompt
// steps; decode attention does both itself). Angles follow the CPU reference exactly (rope.cuh).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/rope.cuh"

namespace tessera::cuda {
namespace {

// One block per (token, head) of the queries and the keys; thread i handles the pair (2i, 2i+1). Key heads also
// write their rotated pairs, and the matching value pairs, into the token's cache slot.
__global__ void rope_store_kernel(const RopeParams p, float* __restrict__ q, const float* __restrict__ k,
                                  const float* __restrict__ v, const int32_t* __restrict__ positions,
                                  const int32_t* __restrict__ slots, void* k_cache, void* v_cache, KvFormat kv_format) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
  if (2 * i >= p.head_dim) return;
  const int q_dim = p.n_head * p.head_dim, kv_dim = p.n_head_kv * p.head_dim;
  const bool is_key = h >= p.n_head;
  const int64_t at = is_key ? static_cast<int64_t>(t) * kv_dim + (h - p.n_head) * p.head_dim + 2 * i
                            : static_cast<int64_t>(t) * q_dim + h * p.head_dim + 2 * i;
  float x0 = is_key ? k[at] : q[at], x1 = is_key ? k[at + 1] : q[at + 1];
  if (2 * i < p.n_dims) {
    const float2 r = rope_rotate(make_float2(x0, x1), rope_cos_sin(p, positions[t], i));
    x0 = r.x, x1 = r.y;
  }
  if (!is_key) {
    q[at] = x0, q[at + 1] = x1;
    return;
  }
  const int64_t slot_at = static_cast<int64_t>(slots[t]) * kv_dim + (at - static_cast<int64_t>(t) * kv_dim);
  const float v0 = v[at], v1 = v[at + 1];
  if (kv_format == KvFormat::F16) {
    reinterpret_cast<__half2*>(k_cache)[slot_at / 2] = __floats2half2_rn(x0, x1);
    reinterpret_cast<__half2*>(v_cache)[slot_at / 2] = __floats2half2_rn(v0, v1);
  } else {
    reinterpret_cast<float2*>(k_cache)[slot_at / 2] = make_float2(x0, x1);
    reinterpret_cast<float2*>(v_cache)[slot_at / 2] = make_float2(v0, v1);
  }
}

}  // namespace

void rope_and_store_kv(const RopeParams& p, float* q, const float* k, const float* v, const int32_t* positions,
                       const int32_t* slots, int n_tokens, void* k_cache, void* v_cache, KvFormat kv_format,
                       cudaStream_t stream) {
  if (n_tokens == 0) return;
  const dim3 grid(n_tokens, p.n_head + p.n_head_kv);
  const int threads = (p.head_dim / 2 + 31) / 32 * 32;
  launch_chained("rope_store_kernel", rope_store_kernel, grid, dim3(threads), 0, stream, p, q, k, v, positions, slots,
                 k_cache, v_cache, kv_format);
}

}  // namespace tessera::cuda
