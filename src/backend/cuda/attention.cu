// Attention over the paged KV cache, in any of the cache formats (kv_cache.cuh). Two kernels:
// - attention_kernel (prompt steps that prompt_attention does not take, and decode where decode_attention_kernel
//   does not apply): one block serves QH query heads that share a KV head (GQA), so each key and value row is
//   read once for all of them; its 4 warps take interleaved keys with an online softmax each, then merge.
// - decode_attention_kernel (decode steps): at most 2 query heads per block (more blocks, each with less work
//   after the wait, were faster than one block for all heads of a KV head, although that reads each K/V row once;
//   docs/notes/2026-11-27-cuda-fused-decode-attention.md), and
//   the keys of a block are a tile in shared memory, copied there before the kernel waits for the previous one
//   (the cache's older keys and the block table are not written by the step's earlier kernels), so the K/V loads
//   overlap the Wq/Wk/Wv matvec. After the wait the block loads its queries and the step's new K/V rows in one
//   round trip, rotates them (RoPE; no separate RoPE kernel), writes the new keys and values into the tile and
//   the cache itself, and computes the scores with a thread per (key, head), the softmax with a warp per head
//   and the weighted values with a thread per output pair. With one split it writes the output and its Q8
//   quantization for the Wo matvec (no merge or quantize_q8 kernel). It is compiled per cache format (keys and
//   values in one format): quantized keys meet the query quantized to 8 bits per block in dp4a dot products,
//   quantized values are decoded pair by pair from the tile, so the tile holds the cache's own bytes.
// Both walk the keys a token sees by index (VisibleKeys: sinks and window with a sliding window).
// For long contexts the keys of a token are split over gridDim.z blocks (flash decoding) whose partial results
// merge_splits_kernel combines.
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_cache.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/q8.cuh"
#include "backend/cuda/rope.cuh"
#include "util/env_options.h"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;

// The lane's DPL values, from `at` on, of a cache row (zeros when !active).
template <int DPL>
__device__ __forceinline__ void load_row(const KvCache& cache, KvFormat f, int64_t slot, int kv_dim, int at,
                                         bool active, float* out) {
  if (!active) {
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = 0;
    return;
  }
  const uint8_t* row = row_data(cache, f, slot, kv_dim);
  if (f == KvFormat::F16) {
    const __half* p = reinterpret_cast<const __half*>(row) + at;
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = __half2float(p[i]);
  } else if (f == KvFormat::F32) {
    const float* p = reinterpret_cast<const float*>(row) + at;
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = p[i];
  } else {
    const __half* scales = row_scales(cache, slot, kv_dim);
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = load_value(f, row, scales, at + i);
  }
}

// DPL: head dimensions per lane (head_dim <= 32 * DPL); QH: query heads per block.
template <int DPL, int QH>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const AttentionParams p, const float* __restrict__ q, const KvCache k_cache,
                     const KvCache v_cache, const int32_t* __restrict__ positions, const KeyWindow* __restrict__ windows,
                     const int32_t* __restrict__ table_offsets, const int32_t* __restrict__ block_table,
                     float* __restrict__ partials, float* __restrict__ out) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int t = blockIdx.x, h0 = blockIdx.y * QH, split = blockIdx.z, n_splits = gridDim.z;
  const int hd = p.head_dim, kv_dim = p.n_head_kv * hd, q_dim = p.n_head * hd;
  const int kv_head = h0 / (p.n_head / p.n_head_kv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d0 = lane * DPL;
  const bool active = d0 < hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));

  const VisibleKeys visible = visible_keys(windows, t, positions[t]);
  const int n_keys = visible.count();
  const int per_split = (n_keys + n_splits - 1) / n_splits;
  const int k_begin = split * per_split, k_end = min(n_keys, k_begin + per_split);
  const int32_t* blocks = block_table + table_offsets[t];
  const bool f16 = p.k_format == KvFormat::F16 && p.v_format == KvFormat::F16;

  // With an f16 cache the query is rounded to f16 first, as ggml does before its f16 dot products.
  float qr[QH][DPL];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      float v = active ? q[static_cast<int64_t>(t) * q_dim + (h0 + h) * hd + d0 + i] : 0.0f;
      qr[h][i] = f16 ? __half2float(__float2half_rn(v)) : v;
    }
  }
  if (p.k_format == KvFormat::Q8_0 || p.k_format == KvFormat::Q4_0) {
    // Quantized keys meet the query rounded as the CPU rounds it for its integer dot products: 8 bits per block of
    // 32 values (a head under 32 values is one block), scale amax / 127 kept as f16. A block's values are on
    // min(32, head_dim) / DPL consecutive lanes.
    const int block_lanes = min(32, hd) / DPL;
#pragma unroll
    for (int h = 0; h < QH; ++h) {
      float amax = 0;
#pragma unroll
      for (int i = 0; i < DPL; ++i) amax = fmaxf(amax, fabsf(qr[h][i]));
      for (int o = 1; o < block_lanes; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
      const float inverse = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
      const float d = __half2float(__float2half_rn(__fdiv_rn(amax, 127.0f)));
#pragma unroll
      for (int i = 0; i < DPL; ++i) qr[h][i] = static_cast<float>(__float2int_rn(__fmul_rn(qr[h][i], inverse))) * d;
    }
  }
  float m[QH], l[QH], acc[QH][DPL];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
    m[h] = -INFINITY;
    l[h] = 0;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[h][i] = 0;
  }

  for (int j = k_begin + warp; j < k_end; j += kWarps) {
    const int64_t slot = kv_slot(blocks, visible.key(j), p.kv_block_shift);
    float kr[DPL], vr[DPL];
    load_row<DPL>(k_cache, p.k_format, slot, kv_dim, kv_head * hd + d0, active, kr);
    load_row<DPL>(v_cache, p.v_format, slot, kv_dim, kv_head * hd + d0, active, vr);
#pragma unroll
    for (int h = 0; h < QH; ++h) {
      float s = 0;
#pragma unroll
      for (int i = 0; i < DPL; ++i) s += qr[h][i] * kr[i];
#pragma unroll
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
      s *= scale;
      const float m_new = fmaxf(m[h], s);
      const float correction = expf(m[h] - m_new);
      const float weight = expf(s - m_new);
      l[h] = l[h] * correction + weight;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[h][i] = acc[h][i] * correction + weight * vr[i];
      m[h] = m_new;
    }
  }

  __shared__ float sm_m[kWarps][QH], sm_l[kWarps][QH], sm_acc[kWarps][QH][32 * DPL];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
    if (lane == 0) {
      sm_m[warp][h] = m[h];
      sm_l[warp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) sm_acc[warp][h][d0 + i] = acc[h][i];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < QH * hd; idx += kWarps * 32) {
    const int h = idx / hd, d = idx % hd;
    float big = -INFINITY;
    for (int w = 0; w < kWarps; ++w) big = fmaxf(big, sm_m[w][h]);
    float sum = 0, o = 0;
    if (big != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        if (sm_m[w][h] == -INFINITY) continue;
        const float f = expf(sm_m[w][h] - big);
        sum += sm_l[w][h] * f;
        o += sm_acc[w][h][d] * f;
      }
    }
    const int head = h0 + h;
    if (n_splits == 1) {
      out[static_cast<int64_t>(t) * q_dim + head * hd + d] = o / sum;
    } else {
      float* part = partials + ((static_cast<int64_t>(t) * p.n_head + head) * n_splits + split) * (hd + 2);
      part[d] = o;
      if (d == 0) {
        part[hd] = big;
        part[hd + 1] = sum;
      }
    }
  }
}

// One block per (token, head); with q8 (head_dim a multiple of 32) it also quantizes the output.
__global__ void merge_splits_kernel(const AttentionParams p, int n_splits, const float* __restrict__ partials,
                                    float* __restrict__ out, const Q8Rows q8) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int t = blockIdx.x, head = blockIdx.y, hd = p.head_dim;
  const float* parts = partials + (static_cast<int64_t>(t) * p.n_head + head) * n_splits * (hd + 2);
  float big = -INFINITY;
  for (int s = 0; s < n_splits; ++s) big = fmaxf(big, parts[s * (hd + 2) + hd]);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float sum = 0, o = 0;
    for (int s = 0; s < n_splits; ++s) {
      const float* part = parts + s * (hd + 2);
      if (part[hd] == -INFINITY) continue;
      const float f = expf(part[hd] - big);
      sum += part[hd + 1] * f;
      o += part[d] * f;
    }
    const float value = o / sum;
    out[(static_cast<int64_t>(t) * p.n_head + head) * hd + d] = value;
    // head_dim is a multiple of 32 with q8: whole warps run this, each on one block.
    if (q8.q) quantize_q8_block(value, q8, t, (head * hd + d) / kQ8Block, static_cast<int>(threadIdx.x % 32));
  }
}

// ---- decode attention ----------------------------------------------------------------------------------------

constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeMaxTileKeys = 256;
// Dynamic shared memory of one block, within every target's limit (sm_86/sm_89: 99 KiB per block).
constexpr int kDecodeSharedBytes = 96 * 1024;
// Output pairs (2 head dimensions of one query head) per thread: QH * head_dim / 2 <= 8 * 256 / 2.
constexpr int kDecodeMaxItems = 4;

int heads_per_block(const AttentionParams& p) {
  const int group = p.n_head / p.n_head_kv;
  return group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
}

// Query heads per decode block: heads_per_block, at most p.max_decode_heads, else TESSERA_DECODE_HEADS (1, 2, 4
// or 8), else 2 (see the top of the file; 1 was no faster: docs/notes/2026-11-27-cuda-fused-decode-attention.md).
int decode_heads(const AttentionParams& p) {
  const int cap = p.max_decode_heads > 0 ? p.max_decode_heads : util::env_options().cuda_decode_heads;
  int heads = heads_per_block(p);
  while (heads > 1 && heads > cap) heads /= 2;
  return heads;
}

__host__ __device__ constexpr bool is_quantized(KvFormat f) { return f == KvFormat::Q8_0 || f == KvFormat::Q4_0; }

// Byte offsets of the decode kernel's shared arrays (all 16-byte aligned). A K row is padded by 16 bytes so that
// the threads of a quarter warp, each reading 16 bytes of its own key, hit different banks. A quantized format's
// tile rows hold the cache's quants, their scales beside them (n_scales per row), and the block's queries are
// also kept quantized: their quants, scales and (Q4_0) sums of quants per block of 32.
struct DecodeLayout {
  int row_bytes = 0, k_stride = 0, n_scales = 0;
  int k_tile = 0, v_tile = 0, k_scales = 0, v_scales = 0, scores = 0, slots = 0, queries = 0, query_q8 = 0,
      query_scales = 0, query_sums = 0, q_angles = 0, new_angles = 0, reduce = 0;
  int total = 0;
};

__host__ __device__ inline int align16(int n) { return (n + 15) / 16 * 16; }

__host__ __device__ inline DecodeLayout decode_layout(int head_dim, KvFormat format, int qh, int tile_keys) {
  DecodeLayout l;
  l.row_bytes = static_cast<int>(kv_data_bytes(format, head_dim));
  l.k_stride = l.row_bytes + 16;
  l.n_scales = is_quantized(format) ? head_dim / kKvQuantBlock : 0;
  int at = 0;
  l.k_tile = at, at += align16(tile_keys * l.k_stride);
  l.v_tile = at, at += align16(tile_keys * l.row_bytes);
  l.k_scales = at, at += align16(tile_keys * l.n_scales * 2);
  l.v_scales = at, at += align16(tile_keys * l.n_scales * 2);
  l.scores = at, at += align16(qh * tile_keys * 4);
  l.slots = at, at += align16(tile_keys * 4);
  l.queries = at, at += align16(qh * head_dim * 4);
  l.query_q8 = at, at += align16(is_quantized(format) ? qh * head_dim : 0);
  l.query_scales = at, at += align16(qh * l.n_scales * 4);
  l.query_sums = at, at += align16(qh * l.n_scales * 4);
  l.q_angles = at, at += align16(head_dim / 2 * 8);
  l.new_angles = at, at += align16(kMaxMatvecTokens * (head_dim / 2) * 8);
  const int pairs = qh * head_dim / 2;
  l.reduce = at, at += align16((pairs > kDecodeThreads ? pairs : kDecodeThreads) * 8);
  l.total = at;
  return l;
}

// The most keys a block holds in shared memory at once (a multiple of 32; 0 when not even 32 fit).
int decode_tile_keys(const AttentionParams& p) {
  const int qh = decode_heads(p);
  int keys = kDecodeMaxTileKeys;
  while (keys > 0 && decode_layout(p.head_dim, p.k_format, qh, keys).total > kDecodeSharedBytes) keys -= 32;
  return keys;
}

struct DecodeArgs {
  AttentionParams p;
  RopeParams rope;
  const float* q;  // [n_tokens][q_dim], not rotated
  const float* k;  // [n_tokens][kv_dim], not rotated
  const float* v;  // [n_tokens][kv_dim]
  const int32_t* positions;
  const KeyWindow* windows;
  const int32_t* write_slots;
  const int32_t* table_offsets;
  const int32_t* block_table;
  int n_tokens;
  int tile_keys;
  KvCache k_cache;
  KvCache v_cache;
  float* partials;
  float* out;
  Q8Rows out_q8;
};

// q (16-byte aligned floats) . key row, head_dim a multiple of 8 (f16, bf16) or 4 (f32); four partial sums.
template <KvFormat F>
__device__ __forceinline__ float dot_row(const float* q, const uint8_t* row, int head_dim) {
  const float4* q4 = reinterpret_cast<const float4*>(q);
  const uint4* r4 = reinterpret_cast<const uint4*>(row);
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  if constexpr (F == KvFormat::F16 || F == KvFormat::BF16) {
    for (int c = 0; c < head_dim / 8; ++c) {
      const uint4 u = r4[c];
      const float4 qa = q4[2 * c], qb = q4[2 * c + 1];
      float2 k0, k1, k2, k3;
      if constexpr (F == KvFormat::F16) {
        k0 = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
        k1 = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
        k2 = __half22float2(*reinterpret_cast<const __half2*>(&u.z));
        k3 = __half22float2(*reinterpret_cast<const __half2*>(&u.w));
      } else {
        k0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
        k1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
        k2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.z));
        k3 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.w));
      }
      s0 += qa.x * k0.x + qa.y * k0.y;
      s1 += qa.z * k1.x + qa.w * k1.y;
      s2 += qb.x * k2.x + qb.y * k2.y;
      s3 += qb.z * k3.x + qb.w * k3.y;
    }
  } else {
    for (int c = 0; c < head_dim / 4; ++c) {
      const float4 k = reinterpret_cast<const float4*>(r4)[c];
      const float4 qa = q4[c];
      s0 += qa.x * k.x;
      s1 += qa.y * k.y;
      s2 += qa.z * k.z;
      s3 += qa.w * k.w;
    }
  }
  return (s0 + s1) + (s2 + s3);
}

// The quantized query (quants, scales, sums per block of 32) . a quantized key row (quants, scales): integer dot
// products block by block, as the CPU backend's (quant::gemm of a Q8_0 query with Q8_0 or Q4_0 keys). All rows
// 16-byte aligned.
template <KvFormat F>
__device__ __forceinline__ float dot_quantized(const int8_t* query, const float* query_scales, const int* query_sums,
                                               const uint8_t* row, const __half* scales, int head_dim) {
  float sum = 0;
  for (int b = 0; b < head_dim / kKvQuantBlock; ++b) {
    const int4 q0 = reinterpret_cast<const int4*>(query)[2 * b], q1 = reinterpret_cast<const int4*>(query)[2 * b + 1];
    int dot;
    if constexpr (F == KvFormat::Q8_0) {
      const int4 k0 = reinterpret_cast<const int4*>(row)[2 * b], k1 = reinterpret_cast<const int4*>(row)[2 * b + 1];
      dot = __dp4a(k0.x, q0.x, __dp4a(k0.y, q0.y, __dp4a(k0.z, q0.z, __dp4a(k0.w, q0.w, 0))));
      dot = __dp4a(k1.x, q1.x, __dp4a(k1.y, q1.y, __dp4a(k1.z, q1.z, __dp4a(k1.w, q1.w, dot))));
    } else {
      // Byte k of a block: value k in the low nibble, value k + 16 in the high one; stored as q + 8.
      const int4 w = reinterpret_cast<const int4*>(row)[b];
      constexpr int kLow = 0x0F0F0F0F;
      dot = __dp4a(w.x & kLow, q0.x, __dp4a(w.y & kLow, q0.y, __dp4a(w.z & kLow, q0.z, __dp4a(w.w & kLow, q0.w, 0))));
      dot = __dp4a((w.x >> 4) & kLow, q1.x,
                   __dp4a((w.y >> 4) & kLow, q1.y, __dp4a((w.z >> 4) & kLow, q1.z, __dp4a((w.w >> 4) & kLow, q1.w, dot))));
      dot -= 8 * query_sums[b];
    }
    sum += __half2float(scales[b]) * query_scales[b] * static_cast<float>(dot);
  }
  return sum;
}

// The query pair (2i, 2i + 1) of one head quantized to 8 bits per block of 32 with the other 15 lanes of the
// half warp that hold its block (lane % 16 == i % 16), as the CPU quantizes a query (llama.cpp's Q8_0
// activations: the scale amax / 127 rounded to f16, 127 / amax, ties to even).
__device__ __forceinline__ void quantize_query_pair(float2 x, int i, int8_t* quants, float* scales, int* sums) {
  const unsigned lanes = block_lanes();
  float amax = fmaxf(fabsf(x.x), fabsf(x.y));
#pragma unroll
  for (int o = 8; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(lanes, amax, o));
  const float inverse = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
  const int q0 = __float2int_rn(__fmul_rn(x.x, inverse)), q1 = __float2int_rn(__fmul_rn(x.y, inverse));
  reinterpret_cast<char2*>(quants)[i] = make_char2(static_cast<signed char>(q0), static_cast<signed char>(q1));
  int sum = q0 + q1;
#pragma unroll
  for (int o = 8; o > 0; o /= 2) sum += __shfl_xor_sync(lanes, sum, o);
  if (i % 16 == 0) {
    scales[i / 16] = __half2float(__float2half_rn(__fdiv_rn(amax, 127.0f)));
    sums[i / 16] = sum;
  }
}

// Grid (n_tokens, n_head / QH, n_splits), kDecodeThreads threads. Block (t, y, split) serves query heads
// y*QH .. y*QH+QH-1 of token t over its split's share of the keys token t sees (0..positions[t], or its window).
// Keys and values in format F. A minimum of one block per SM lets ptxas use the registers it wants (102-116 with
// an f16 cache): without it, it held them to 64-80 and spilled up to 40 bytes, on a kernel whose every step is on
// the decode's critical path.
template <int QH, KvFormat F>
__global__ void __launch_bounds__(kDecodeThreads, 1) decode_attention_kernel(const DecodeArgs a) {
  constexpr bool kQuantized = is_quantized(F);
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float m_run[QH], l_run[QH], correction[QH];
  const AttentionParams& p = a.p;
  const int t = blockIdx.x, h0 = blockIdx.y * QH, split = blockIdx.z, n_splits = gridDim.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int hd = p.head_dim, half_hd = hd / 2, kv_dim = p.n_head_kv * hd, q_dim = p.n_head * hd;
  const int group = p.n_head / p.n_head_kv, kv_head = h0 / group;
  const int n_rotated = a.rope.n_dims / 2;
  const int tile_keys = a.tile_keys;
  const DecodeLayout layout = decode_layout(hd, F, QH, tile_keys);
  const int n_scales = layout.n_scales;
  uint8_t* const k_tile = smem + layout.k_tile;
  uint8_t* const v_tile = smem + layout.v_tile;
  __half* const k_tile_scales = reinterpret_cast<__half*>(smem + layout.k_scales);  // [tile_keys][n_scales]
  __half* const v_tile_scales = reinterpret_cast<__half*>(smem + layout.v_scales);
  float* const scores = reinterpret_cast<float*>(smem + layout.scores);  // [QH][tile_keys]
  int32_t* const tile_slots = reinterpret_cast<int32_t*>(smem + layout.slots);
  float* const queries = reinterpret_cast<float*>(smem + layout.queries);  // [QH][hd], later the outputs
  int8_t* const query_q8 = reinterpret_cast<int8_t*>(smem + layout.query_q8);       // [QH][hd]
  float* const query_scales = reinterpret_cast<float*>(smem + layout.query_scales);  // [QH][n_scales]
  int* const query_sums = reinterpret_cast<int*>(smem + layout.query_sums);          // [QH][n_scales]
  float2* const q_angles = reinterpret_cast<float2*>(smem + layout.q_angles);
  float2* const new_angles = reinterpret_cast<float2*>(smem + layout.new_angles);  // [token][hd / 2]
  float2* const reduce = reinterpret_cast<float2*>(smem + layout.reduce);
  // KV head kv_head's part of a cache row: whole blocks of the quantized formats (head_dim a multiple of 32).
  const int64_t head_offset = static_cast<int64_t>(kv_head) * hd;
  auto head_row = [&](const KvCache& c, int64_t slot) {
    return row_data(c, F, slot, kv_dim) + kv_data_bytes(F, head_offset);
  };
  auto head_scales = [&](const KvCache& c, int64_t slot) {
    if constexpr (kQuantized) {
      return row_scales(c, slot, kv_dim) + head_offset / kKvQuantBlock;
    } else {
      return static_cast<__half*>(nullptr);
    }
  };

  const int position = a.positions[t];
  const VisibleKeys visible = visible_keys(a.windows, t, position);
  const int n_keys = visible.count();
  const int per_split = (n_keys + n_splits - 1) / n_splits;
  const int k_begin = min(n_keys, split * per_split), k_end = min(n_keys, k_begin + per_split);
  const int32_t sequence = a.table_offsets[t];
  const int32_t* const blocks = a.block_table + sequence;

  // The step's new keys: step_key[tt] is the index among token t's visible keys of step token tt's key when tt
  // belongs to this sequence and t sees it (its key is then written by this launch, so every block takes it from
  // k/v, never from the cache), else -1. row_token: the tokens whose rows this block fills in its first tile, or
  // stores in the cache (its own token, once per (token, KV head)), loaded right after the wait together with the
  // queries.
  __shared__ int step_key[kMaxMatvecTokens], row_token[kMaxMatvecTokens], n_new_rows;
  const int first_end = min(k_end, k_begin + tile_keys), first_n = first_end - k_begin;
  const bool store_own = split == 0 && h0 % group == 0;
  const int own_slot = a.write_slots[t];
  if (tid < a.n_tokens) step_key[tid] = a.table_offsets[tid] == sequence ? visible.index_of(a.positions[tid]) : -1;
  __syncthreads();
  if (tid == 0) {
    int n_new = 0;
    for (int tt = 0; tt < a.n_tokens; ++tt) {
      const int v = step_key[tt];
      if ((v >= k_begin && v < first_end) || (tt == t && store_own)) row_token[n_new++] = tt;
    }
    n_new_rows = n_new;
  }

  // Copies visible keys [begin, begin + n) of the sequence into the tile (asynchronously; wait_async_copies + a
  // barrier before reading them), except the step's new keys; a quantized format's scales with plain loads.
  auto load_tile = [&](int begin, int n) {
    for (int i = tid; i < n; i += kDecodeThreads) {
      bool fresh = false;
      for (int tt = 0; tt < a.n_tokens; ++tt) fresh |= step_key[tt] == begin + i;
      tile_slots[i] = fresh ? -1 : kv_slot(blocks, visible.key(begin + i), p.kv_block_shift);
    }
    __syncthreads();
    const int chunks = layout.row_bytes / 16;
    for (int c = tid; c < n * chunks; c += kDecodeThreads) {
      const int r = c / chunks, part = c % chunks;
      if (tile_slots[r] < 0) continue;
      copy_16_async(k_tile + r * layout.k_stride + part * 16, head_row(a.k_cache, tile_slots[r]) + part * 16);
      copy_16_async(v_tile + r * layout.row_bytes + part * 16, head_row(a.v_cache, tile_slots[r]) + part * 16);
    }
    commit_async_copies();
    if constexpr (kQuantized) {
      for (int c = tid; c < n * n_scales; c += kDecodeThreads) {
        const int r = c / n_scales, b = c % n_scales;
        if (tile_slots[r] < 0) continue;
        k_tile_scales[c] = head_scales(a.k_cache, tile_slots[r])[b];
        v_tile_scales[c] = head_scales(a.v_cache, tile_slots[r])[b];
      }
    }
  };

  // Before the previous kernel (the Wq/Wk/Wv matvec) finishes: RoPE angles, and the first tile of older keys.
  // Positions, windows and slots come from the host's upload; the older keys from earlier steps.
  for (int i = tid; i < n_rotated; i += kDecodeThreads) q_angles[i] = rope_cos_sin(a.rope, position, i);
  if (tid < QH) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0;
  }
  __syncthreads();
  for (int e = 0; e < n_new_rows; ++e) {
    const int pt = a.positions[row_token[e]];
    for (int i = tid; i < n_rotated; i += kDecodeThreads) new_angles[e * half_hd + i] = rope_cos_sin(a.rope, pt, i);
  }
  __syncthreads();
  if (k_begin < k_end) load_tile(k_begin, first_n);

  allow_next_kernel();
  wait_for_previous_kernel();

  // One round trip for what the Wq/Wk/Wv matvec wrote: the block's queries, and the step rows it fills or stores.
  constexpr int kQueryItems = (QH * 128 + kDecodeThreads - 1) / kDecodeThreads;  // head_dim <= 256
  constexpr int kRowItems = (kMaxMatvecTokens * 128 + kDecodeThreads - 1) / kDecodeThreads;
  float2 qx[kQueryItems], kx[kRowItems], vx[kRowItems];
#pragma unroll
  for (int it = 0; it < kQueryItems; ++it) {
    const int idx = tid + it * kDecodeThreads, h = idx / half_hd, i = idx % half_hd;
    if (idx < QH * half_hd) qx[it] = reinterpret_cast<const float2*>(a.q + static_cast<int64_t>(t) * q_dim + (h0 + h) * hd)[i];
  }
  const int n_row_items = n_new_rows * half_hd;
#pragma unroll
  for (int it = 0; it < kRowItems; ++it) {
    const int idx = tid + it * kDecodeThreads;
    if (idx < n_row_items) {
      const int64_t src = static_cast<int64_t>(row_token[idx / half_hd]) * kv_dim + head_offset;
      kx[it] = reinterpret_cast<const float2*>(a.k + src)[idx % half_hd];
      vx[it] = reinterpret_cast<const float2*>(a.v + src)[idx % half_hd];
    }
  }
  // Queries rotated; rounded to f16 with an f16 cache as ggml does before its f16 dot products, quantized for the
  // integer dot products with quantized keys. A quantized block's 16 pairs are 16 lanes of a half warp here and in
  // the stores below: head_dim / 2 is a multiple of 16 for the quantized formats.
#pragma unroll
  for (int it = 0; it < kQueryItems; ++it) {
    const int idx = tid + it * kDecodeThreads, h = idx / half_hd, i = idx % half_hd;
    if (idx < QH * half_hd) {
      float2 x = qx[it];
      if (i < n_rotated) x = rope_rotate(x, q_angles[i]);
      if constexpr (F == KvFormat::F16) x = __half22float2(__floats2half2_rn(x.x, x.y));
      reinterpret_cast<float2*>(queries + h * hd)[i] = x;
      if constexpr (kQuantized) {
        quantize_query_pair(x, i, query_q8 + h * hd, query_scales + h * n_scales, query_sums + h * n_scales);
      }
    }
  }
  // New keys rotated into the first tile, and the token's own key and value into its cache slot.
#pragma unroll
  for (int it = 0; it < kRowItems; ++it) {
    const int idx = tid + it * kDecodeThreads, e = idx / half_hd, i = idx % half_hd;
    if (idx < n_row_items) {
      const int tt = row_token[e], r = step_key[tt] - k_begin;
      float2 key = kx[it];
      if (i < n_rotated) key = rope_rotate(key, new_angles[e * half_hd + i]);
      if (step_key[tt] >= 0 && r >= 0 && r < first_n) {
        store_pair<F>(k_tile + r * layout.k_stride, k_tile_scales + r * n_scales, 2 * i, key);
        store_pair<F>(v_tile + r * layout.row_bytes, v_tile_scales + r * n_scales, 2 * i, vx[it]);
      }
      if (tt == t && store_own) {
        store_pair<F>(head_row(a.k_cache, own_slot), head_scales(a.k_cache, own_slot), 2 * i, key);
        store_pair<F>(head_row(a.v_cache, own_slot), head_scales(a.v_cache, own_slot), 2 * i, vx[it]);
      }
    }
  }

  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int n_pairs = QH * half_hd;
  const int groups = n_pairs >= kDecodeThreads ? 1 : kDecodeThreads / n_pairs;  // threads per output pair
  const int n_items = groups * n_pairs;
  float2 acc[kDecodeMaxItems];
#pragma unroll
  for (int it = 0; it < kDecodeMaxItems; ++it) acc[it] = make_float2(0.0f, 0.0f);

  for (int begin = k_begin; begin < k_end; begin += tile_keys) {
    const int n = min(tile_keys, k_end - begin);
    if (begin != k_begin) load_tile(begin, n);
    wait_async_copies<0>();
    __syncthreads();
    if (begin != k_begin) {
      // A later tile (long contexts): the step's new keys in it straight from k/v.
      for (int tt = 0; tt < a.n_tokens; ++tt) {
        const int r = step_key[tt] - begin;
        if (step_key[tt] < 0 || r < 0 || r >= n) continue;
        const int64_t src = static_cast<int64_t>(tt) * kv_dim + head_offset;
        for (int i = tid; i < half_hd; i += kDecodeThreads) {
          float2 key = reinterpret_cast<const float2*>(a.k + src)[i];
          if (i < n_rotated) key = rope_rotate(key, rope_cos_sin(a.rope, a.positions[tt], i));
          store_pair<F>(k_tile + r * layout.k_stride, k_tile_scales + r * n_scales, 2 * i, key);
          store_pair<F>(v_tile + r * layout.row_bytes, v_tile_scales + r * n_scales, 2 * i,
                        reinterpret_cast<const float2*>(a.v + src)[i]);
        }
      }
      __syncthreads();
    }

    // Scores: a thread per (key, head); the lanes of a warp take consecutive keys of one head.
    for (int idx = tid; idx < QH * n; idx += kDecodeThreads) {
      const int h = idx / n, r = idx % n;
      float dot;
      if constexpr (kQuantized) {
        dot = dot_quantized<F>(query_q8 + h * hd, query_scales + h * n_scales, query_sums + h * n_scales,
                               k_tile + r * layout.k_stride, k_tile_scales + r * n_scales, hd);
      } else {
        dot = dot_row<F>(queries + h * hd, k_tile + r * layout.k_stride, hd);
      }
      scores[h * tile_keys + r] = dot * scale;
    }
    __syncthreads();

    // Softmax, a warp per head: weights relative to the running maximum, and the factor for the earlier tiles.
    if (warp < QH) {
      float* const s = scores + warp * tile_keys;
      float big = -INFINITY;
      for (int r = lane; r < n; r += 32) big = fmaxf(big, s[r]);
#pragma unroll
      for (int o = 16; o > 0; o /= 2) big = fmaxf(big, __shfl_xor_sync(0xFFFFFFFFu, big, o));
      const float m_old = m_run[warp], m_new = fmaxf(m_old, big);
      float sum = 0;
      for (int r = lane; r < n; r += 32) {
        const float w = expf(s[r] - m_new);
        s[r] = w;
        sum += w;
      }
#pragma unroll
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
      if (lane == 0) {
        const float c = expf(m_old - m_new);
        correction[warp] = c;
        l_run[warp] = l_run[warp] * c + sum;
        m_run[warp] = m_new;
      }
    }
    __syncthreads();

    // Weighted values: a thread per (key group, output pair); the lanes of a warp read consecutive pairs of a row.
#pragma unroll
    for (int it = 0; it < kDecodeMaxItems; ++it) {
      const int item = tid + it * kDecodeThreads;
      if (item >= n_items) break;
      const int g = item / n_pairs, pair = item % n_pairs, h = pair / half_hd, i = pair % half_hd;
      const float c = correction[h];
      const float* const s = scores + h * tile_keys;
      // Four keys per step into four sums: their shared-memory loads are in flight together.
      float2 o[4] = {make_float2(acc[it].x * c, acc[it].y * c)};
      int r = g;
      for (; r + 3 * groups < n; r += 4 * groups) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int row = r + k * groups;
          const float w = s[row];
          const float2 x = load_pair<F>(v_tile + row * layout.row_bytes, v_tile_scales + row * n_scales, 2 * i);
          o[k].x += w * x.x, o[k].y += w * x.y;
        }
      }
      for (; r < n; r += groups) {
        const float w = s[r];
        const float2 x = load_pair<F>(v_tile + r * layout.row_bytes, v_tile_scales + r * n_scales, 2 * i);
        o[0].x += w * x.x, o[0].y += w * x.y;
      }
      acc[it] = make_float2((o[0].x + o[1].x) + (o[2].x + o[3].x), (o[0].y + o[1].y) + (o[2].y + o[3].y));
    }
    __syncthreads();  // the tile is free for the next one
  }

  // Sum the key groups; write the output (one split) or this split's partial result.
#pragma unroll
  for (int it = 0; it < kDecodeMaxItems; ++it) {
    const int item = tid + it * kDecodeThreads;
    if (item < n_items) reduce[item] = acc[it];
  }
  __syncthreads();
  float* const outputs = queries;
  for (int pair = tid; pair < n_pairs; pair += kDecodeThreads) {
    float2 o = make_float2(0.0f, 0.0f);
    for (int g = 0; g < groups; ++g) {
      const float2 x = reduce[g * n_pairs + pair];
      o.x += x.x, o.y += x.y;
    }
    const int h = pair / half_hd, i = pair % half_hd, head = h0 + h;
    if (n_splits == 1) {
      o = make_float2(o.x / l_run[h], o.y / l_run[h]);
      reinterpret_cast<float2*>(a.out + static_cast<int64_t>(t) * q_dim + head * hd)[i] = o;
      reinterpret_cast<float2*>(outputs + h * hd)[i] = o;
    } else {
      float* const part = a.partials + ((static_cast<int64_t>(t) * p.n_head + head) * n_splits + split) * (hd + 2);
      part[2 * i] = o.x;
      part[2 * i + 1] = o.y;
      if (i == 0) {
        part[hd] = m_run[h];
        part[hd + 1] = l_run[h];
      }
    }
  }
  if (n_splits == 1 && a.out_q8.q) {
    // head_dim is a multiple of 32 here: each warp quantizes whole blocks of the block's QH heads.
    __syncthreads();
    for (int b = warp; b < QH * hd / kQ8Block; b += kDecodeWarps) {
      quantize_q8_block(outputs[b * kQ8Block + lane], a.out_q8, t, (h0 * hd) / kQ8Block + b, lane);
    }
  }
}

// Lets the kernel use more than the default 48 KiB of dynamic shared memory; once per instance, outside graph
// capture (decode_attention_prepare).
template <int QH, KvFormat F>
void configure_decode() {
  static const bool configured = [] {
    check_cuda(cudaFuncSetAttribute(decode_attention_kernel<QH, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    kDecodeSharedBytes),
               "cudaFuncSetAttribute(decode_attention_kernel)");
    return true;
  }();
  (void)configured;
}

template <KvFormat F>
void configure_decode_heads(int heads) {
  switch (heads) {
    case 8: configure_decode<8, F>(); break;
    case 4: configure_decode<4, F>(); break;
    case 2: configure_decode<2, F>(); break;
    default: configure_decode<1, F>(); break;
  }
}

template <int QH, KvFormat F>
void launch_decode(const DecodeArgs& a, int n_splits, cudaStream_t stream) {
  configure_decode<QH, F>();
  const int shared = decode_layout(a.p.head_dim, F, QH, a.tile_keys).total;
  const dim3 grid(a.n_tokens, a.p.n_head / QH, n_splits);
  launch_chained("decode_attention_kernel", decode_attention_kernel<QH, F>, grid, dim3(kDecodeThreads),
                 static_cast<size_t>(shared), stream, a);
}

template <KvFormat F>
void launch_decode_heads(int heads, const DecodeArgs& a, int n_splits, cudaStream_t stream) {
  switch (heads) {
    case 8: launch_decode<8, F>(a, n_splits, stream); break;
    case 4: launch_decode<4, F>(a, n_splits, stream); break;
    case 2: launch_decode<2, F>(a, n_splits, stream); break;
    default: launch_decode<1, F>(a, n_splits, stream); break;
  }
}

// ---- host side -------------------------------------------------------------------------------------------------

struct AttentionInputs {
  const float* q;
  KvCache k_cache;
  KvCache v_cache;
  const int32_t* positions;
  const KeyWindow* windows;
  const int32_t* table_offsets;
  const int32_t* block_table;
  float* partials;
  float* out;
};

template <int DPL, int QH>
void launch(const AttentionParams& p, const AttentionInputs& in, int n_tokens, int n_splits, cudaStream_t stream) {
  const dim3 grid(n_tokens, p.n_head / QH, n_splits);
  launch_chained("attention_kernel", attention_kernel<DPL, QH>, grid, dim3(kWarps * 32), 0, stream, p, in.q,
                 in.k_cache, in.v_cache, in.positions, in.windows, in.table_offsets, in.block_table, in.partials,
                 in.out);
}

template <int DPL>
void launch_heads(int heads, const AttentionParams& p, const AttentionInputs& in, int n_tokens, int n_splits,
                  cudaStream_t stream) {
  switch (heads) {
    case 8: launch<DPL, 8>(p, in, n_tokens, n_splits, stream); break;
    case 4: launch<DPL, 4>(p, in, n_tokens, n_splits, stream); break;
    case 2: launch<DPL, 2>(p, in, n_tokens, n_splits, stream); break;
    default: launch<DPL, 1>(p, in, n_tokens, n_splits, stream); break;
  }
}

}  // namespace

size_t attention_partials_floats(const AttentionParams& p, int n_tokens, int n_splits) {
  return static_cast<size_t>(n_tokens) * p.n_head * n_splits * (p.head_dim + 2);
}

void attention(const AttentionParams& p, const float* q, const KvCache& k_cache, const KvCache& v_cache,
               const int32_t* positions, const KeyWindow* windows, const int32_t* table_offsets,
               const int32_t* block_table, int n_tokens, int n_splits, float* partials, float* out,
               cudaStream_t stream) {
  if (n_tokens == 0) return;
  const int heads = heads_per_block(p);
  int dpl = 1;
  while (dpl < 8 && (32 * dpl < p.head_dim || p.head_dim % dpl != 0)) dpl *= 2;
  if (32 * dpl < p.head_dim || p.head_dim % dpl != 0) {
    throw std::runtime_error("the CUDA attention kernel supports head dimensions up to 256, not " +
                             std::to_string(p.head_dim));
  }
  const AttentionInputs in{q, k_cache, v_cache, positions, windows, table_offsets, block_table, partials, out};
  switch (dpl) {
    case 1: launch_heads<1>(heads, p, in, n_tokens, n_splits, stream); break;
    case 2: launch_heads<2>(heads, p, in, n_tokens, n_splits, stream); break;
    case 4: launch_heads<4>(heads, p, in, n_tokens, n_splits, stream); break;
    default: launch_heads<8>(heads, p, in, n_tokens, n_splits, stream); break;
  }
  if (n_splits > 1) {
    launch_chained("merge_splits_kernel", merge_splits_kernel, dim3(n_tokens, p.n_head), dim3(128), 0, stream, p,
                   n_splits, partials, out, Q8Rows{});
  }
}

bool decode_attention_supported(const AttentionParams& p) {
  if (p.k_format != p.v_format) return false;
  const bool whole_rows = is_quantized(p.k_format) ? p.head_dim % kKvQuantBlock == 0
                                                   : kv_data_bytes(p.k_format, p.head_dim) % 16 == 0;
  return p.head_dim % 2 == 0 && p.head_dim <= 256 && whole_rows && decode_tile_keys(p) > 0;
}

bool decode_attention_fuses_q8(const AttentionParams& p) { return p.head_dim % kQ8Block == 0; }

int decode_attention_splits(const AttentionParams& p, int max_keys, int max_splits) {
  const int tile = decode_tile_keys(p);
  int n_splits = 1;
  while (n_splits < max_splits && static_cast<int64_t>(n_splits) * tile < max_keys) n_splits *= 2;
  return n_splits < max_splits ? n_splits : max_splits;
}

void decode_attention_prepare(const AttentionParams& p) {
  const int heads = decode_heads(p);
  switch (p.k_format) {
    case KvFormat::F16: configure_decode_heads<KvFormat::F16>(heads); break;
    case KvFormat::F32: configure_decode_heads<KvFormat::F32>(heads); break;
    case KvFormat::BF16: configure_decode_heads<KvFormat::BF16>(heads); break;
    case KvFormat::Q8_0: configure_decode_heads<KvFormat::Q8_0>(heads); break;
    case KvFormat::Q4_0: configure_decode_heads<KvFormat::Q4_0>(heads); break;
  }
}

void decode_attention(const AttentionParams& p, const RopeParams& rope, const float* q, const float* k, const float* v,
                      const int32_t* positions, const KeyWindow* windows, const int32_t* write_slots,
                      const int32_t* table_offsets, const int32_t* block_table, int n_tokens, int n_splits,
                      const KvCache& k_cache, const KvCache& v_cache, float* partials, float* out,
                      const Q8Rows& out_q8, cudaStream_t stream) {
  if (n_tokens == 0) return;
  if (n_tokens > kMaxMatvecTokens) throw std::runtime_error("decode_attention: more than 8 tokens");
  if (!decode_attention_supported(p)) {
    throw std::runtime_error("decode_attention: head dimension " + std::to_string(p.head_dim) +
                             " with this KV cache format is not supported");
  }
  if (out_q8.q && (!decode_attention_fuses_q8(p) || out_q8.ld != p.n_head * p.head_dim)) {
    throw std::runtime_error("decode_attention: bad width for the Q8 output");
  }
  const DecodeArgs a{p,         rope,          q,           k,        v,       positions,
                     windows,   write_slots,   table_offsets, block_table, n_tokens, decode_tile_keys(p),
                     k_cache,   v_cache,       partials,    out,      n_splits > 1 ? Q8Rows{} : out_q8};
  const int heads = decode_heads(p);
  switch (p.k_format) {
    case KvFormat::F16: launch_decode_heads<KvFormat::F16>(heads, a, n_splits, stream); break;
    case KvFormat::F32: launch_decode_heads<KvFormat::F32>(heads, a, n_splits, stream); break;
    case KvFormat::BF16: launch_decode_heads<KvFormat::BF16>(heads, a, n_splits, stream); break;
    case KvFormat::Q8_0: launch_decode_heads<KvFormat::Q8_0>(heads, a, n_splits, stream); break;
    case KvFormat::Q4_0: launch_decode_heads<KvFormat::Q4_0>(heads, a, n_splits, stream); break;
  }
  if (n_splits > 1) {
    launch_chained("merge_splits_kernel", merge_splits_kernel, dim3(n_tokens, p.n_head), dim3(128), 0, stream, p,
                   n_splits, partials, out, out_q8);
  }
}

}  // namespace tessera::cuda
