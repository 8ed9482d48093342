// RoPE on the new queries and keys, fused with writing the keys and values into their KV-cache slots (prompt
// steps; decode attention does both itself), and the context shift's re-rotation of cached keys. Angles follow
// the CPU reference exactly (rope.cuh).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_cache.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/rope.cuh"

namespace tessera::cuda {
namespace {

// Blocks (t, h) for h < n_head rotate query head h of token t; blocks (t, n_head + c) rotate the keys of chunk c
// of token t's key row (kv_store_chunk values: a head, or a quantized block spanning heads) and store them, with
// the values, into the token's cache slot. Thread i handles the pair (2i, 2i+1) of its head or chunk, so a
// quantized block's 16 pairs are 16 lanes of a half warp.
__global__ void rope_store_kernel(const RopeParams p, float* __restrict__ q, const float* __restrict__ k,
                                  const float* __restrict__ v, const int32_t* __restrict__ positions,
                                  const int32_t* __restrict__ slots, const KvCache k_cache, const KvCache v_cache,
                                  const KvFormats formats, const int chunk) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
  const int q_dim = p.n_head * p.head_dim, kv_dim = p.n_head_kv * p.head_dim;
  if (h < p.n_head) {
    if (2 * i >= p.head_dim) return;
    float* x = q + static_cast<int64_t>(t) * q_dim + h * p.head_dim + 2 * i;
    if (2 * i < p.n_dims) {
      const float2 r = rope_rotate(make_float2(x[0], x[1]), rope_cos_sin(p, positions[t], i));
      x[0] = r.x, x[1] = r.y;
    }
    return;
  }
  if (2 * i >= chunk) return;  // whole half warps: chunk is a multiple of 32 where it is quantized
  const int at = (h - p.n_head) * chunk + 2 * i, dim = at % p.head_dim;
  const int64_t src = static_cast<int64_t>(t) * kv_dim + at;
  float2 key = make_float2(k[src], k[src + 1]);
  if (dim < p.n_dims) key = rope_rotate(key, rope_cos_sin(p, positions[t], dim / 2));
  const int64_t slot = slots[t];
  store_pair(formats.k, row_data(k_cache, formats.k, slot, kv_dim), row_scales(k_cache, slot, kv_dim), at, key);
  store_pair(formats.v, row_data(v_cache, formats.v, slot, kv_dim), row_scales(v_cache, slot, kv_dim), at,
             make_float2(v[src], v[src + 1]));
}

// Block (s, c): chunk c of the key row in slot slots[s], turned by the angles of `delta` positions.
__global__ void rotate_cached_keys_kernel(const RopeParams p, const KvCache k_cache, const KvFormat format,
                                          const int delta, const int32_t* __restrict__ slots, const int chunk) {
  const int i = threadIdx.x;
  if (2 * i >= chunk) return;
  const int kv_dim = p.n_head_kv * p.head_dim, at = blockIdx.y * chunk + 2 * i, dim = at % p.head_dim;
  const int64_t slot = slots[blockIdx.x];
  uint8_t* const row = row_data(k_cache, format, slot, kv_dim);
  __half* const scales = row_scales(k_cache, slot, kv_dim);
  float2 key = load_pair(format, row, scales, at);
  if (dim < p.n_dims) key = rope_rotate(key, rope_cos_sin(p, delta, dim / 2));
  // A quantized block's lanes have all read it before any writes it: store_pair's shuffles wait for every lane.
  store_pair(format, row, scales, at, key);
}

__global__ void copy_kv_slots_kernel(const KvCache cache, const int64_t data_bytes, const int n_scales,
                                     const int2* __restrict__ copies) {
  const int2 c = copies[blockIdx.x];
  const uint32_t* from = reinterpret_cast<const uint32_t*>(cache.data + c.x * data_bytes);
  uint32_t* to = reinterpret_cast<uint32_t*>(cache.data + c.y * data_bytes);
  for (int64_t w = threadIdx.x; w < data_bytes / 4; w += blockDim.x) to[w] = from[w];
  for (int s = threadIdx.x; s < n_scales; s += blockDim.x) {
    cache.scales[static_cast<int64_t>(c.y) * n_scales + s] = cache.scales[static_cast<int64_t>(c.x) * n_scales + s];
  }
}

int pair_threads(int values) { return (values / 2 + 31) / 32 * 32; }

}  // namespace

void rope_and_store_kv(const RopeParams& p, float* q, const float* k, const float* v, const int32_t* positions,
                       const int32_t* slots, int n_tokens, const KvCache& k_cache, const KvCache& v_cache,
                       KvFormats formats, cudaStream_t stream) {
  if (n_tokens == 0) return;
  const int chunk = kv_store_chunk(formats, p.head_dim);
  const dim3 grid(n_tokens, p.n_head + p.n_head_kv * p.head_dim / chunk);
  const int threads = pair_threads(chunk > p.head_dim ? chunk : p.head_dim);
  launch_chained("rope_store_kernel", rope_store_kernel, grid, dim3(threads), 0, stream, p, q, k, v, positions, slots,
                 k_cache, v_cache, formats, chunk);
}

void rotate_cached_keys(const RopeParams& p, const KvCache& k_cache, KvFormat format, int delta, const int32_t* slots,
                        int n_slots, cudaStream_t stream) {
  if (n_slots == 0) return;
  const int chunk = kv_store_chunk(KvFormats(format), p.head_dim);
  const dim3 grid(n_slots, p.n_head_kv * p.head_dim / chunk);
  rotate_cached_keys_kernel<<<grid, pair_threads(chunk), 0, stream>>>(p, k_cache, format, delta, slots, chunk);
  check_cuda(cudaGetLastError(), "rotate_cached_keys_kernel");
}

void copy_kv_slots(const KvCache& cache, KvFormat format, int kv_dim, const int2* copies, int n_copies,
                   cudaStream_t stream) {
  if (n_copies == 0) return;
  const int n_scales = format == KvFormat::Q8_0 || format == KvFormat::Q4_0 ? kv_dim / kKvQuantBlock : 0;
  copy_kv_slots_kernel<<<n_copies, 128, 0, stream>>>(cache, kv_data_bytes(format, kv_dim), n_scales, copies);
  check_cuda(cudaGetLastError(), "copy_kv_slots_kernel");
}

}  // namespace tessera::cuda
