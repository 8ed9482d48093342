// Attention over the paged KV cache. One block serves QH query heads that share a KV head (GQA), so each key and
// value row is read once for all of them; its 4 warps take interleaved keys with an online softmax each, then
// merge. For decode the keys of a token are also split over gridDim.z blocks (flash decoding) whose partial
// results a second kernel merges, so that a single token still fills the GPU.
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;

template <int DPL>
__device__ __forceinline__ void load_row(const void* cache, int64_t offset, bool f16, bool active, float* out) {
  if (!active) {
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = 0;
    return;
  }
  if (f16) {
    const __half* p = static_cast<const __half*>(cache) + offset;
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = __half2float(p[i]);
  } else {
    const float* p = static_cast<const float*>(cache) + offset;
#pragma unroll
    for (int i = 0; i < DPL; ++i) out[i] = p[i];
  }
}

// DPL: head dimensions per lane (head_dim <= 32 * DPL); QH: query heads per block.
template <int DPL, int QH>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const AttentionParams p, const float* __restrict__ q, const void* __restrict__ k_cache,
                     const void* __restrict__ v_cache, const int32_t* __restrict__ positions,
                     const int32_t* __restrict__ slot_offsets, const int32_t* __restrict__ slot_table,
                     float* __restrict__ partials, float* __restrict__ out) {
  wait_for_previous_kernel();
  allow_next_kernel();
  const int t = blockIdx.x, h0 = blockIdx.y * QH, split = blockIdx.z, n_splits = gridDim.z;
  const int hd = p.head_dim, kv_dim = p.n_head_kv * hd, q_dim = p.n_head * hd;
  const int kv_head = h0 / (p.n_head / p.n_head_kv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d0 = lane * DPL;
  const bool active = d0 < hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));

  const int n_keys = positions[t] + 1;
  const int per_split = (n_keys + n_splits - 1) / n_splits;
  const int k_begin = split * per_split, k_end = min(n_keys, k_begin + per_split);
  const int32_t* slots = slot_table + slot_offsets[t];

  // With an f16 cache the query is rounded to f16 first, as ggml does before its f16 dot products.
  float qr[QH][DPL];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      float v = active ? q[static_cast<int64_t>(t) * q_dim + (h0 + h) * hd + d0 + i] : 0.0f;
      qr[h][i] = p.f16_cache ? __half2float(__float2half_rn(v)) : v;
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
    const int64_t offset = static_cast<int64_t>(slots[j]) * kv_dim + kv_head * hd + d0;
    float kr[DPL], vr[DPL];
    load_row<DPL>(k_cache, offset, p.f16_cache, active, kr);
    load_row<DPL>(v_cache, offset, p.f16_cache, active, vr);
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

__global__ void merge_splits_kernel(const AttentionParams p, int n_splits, const float* __restrict__ partials,
                                    float* __restrict__ out) {
  wait_for_previous_kernel();
  allow_next_kernel();
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
    out[(static_cast<int64_t>(t) * p.n_head + head) * hd + d] = o / sum;
  }
}

template <int DPL, int QH>
void launch(const AttentionParams& p, const float* q, const void* k_cache, const void* v_cache,
            const int32_t* positions, const int32_t* slot_offsets, const int32_t* slot_table, int n_tokens,
            int n_splits, float* partials, float* out, cudaStream_t stream) {
  const dim3 grid(n_tokens, p.n_head / QH, n_splits);
  launch_chained("attention_kernel", attention_kernel<DPL, QH>, grid, dim3(kWarps * 32), 0, stream, p, q, k_cache,
                 v_cache, positions, slot_offsets, slot_table, partials, out);
}

template <int DPL>
void launch_heads(int heads_per_block, const AttentionParams& p, const float* q, const void* k_cache,
                  const void* v_cache, const int32_t* positions, const int32_t* slot_offsets, const int32_t* slot_table,
                  int n_tokens, int n_splits, float* partials, float* out, cudaStream_t stream) {
  switch (heads_per_block) {
    case 8:
      launch<DPL, 8>(p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits, partials, out,
                     stream);
      break;
    case 4:
      launch<DPL, 4>(p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits, partials, out,
                     stream);
      break;
    case 2:
      launch<DPL, 2>(p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits, partials, out,
                     stream);
      break;
    default:
      launch<DPL, 1>(p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits, partials, out,
                     stream);
      break;
  }
}

}  // namespace

size_t attention_partials_floats(const AttentionParams& p, int n_tokens, int n_splits) {
  return static_cast<size_t>(n_tokens) * p.n_head * n_splits * (p.head_dim + 2);
}

void attention(const AttentionParams& p, const float* q, const void* k_cache, const void* v_cache,
               const int32_t* positions, const int32_t* slot_offsets, const int32_t* slot_table, int n_tokens,
               int n_splits, float* partials, float* out, cudaStream_t stream) {
  if (n_tokens == 0) return;
  const int group = p.n_head / p.n_head_kv;
  const int heads_per_block = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
  int dpl = 1;
  while (dpl < 8 && (32 * dpl < p.head_dim || p.head_dim % dpl != 0)) dpl *= 2;
  if (32 * dpl < p.head_dim || p.head_dim % dpl != 0) {
    throw std::runtime_error("the CUDA attention kernel supports head dimensions up to 256, not " +
                             std::to_string(p.head_dim));
  }
  switch (dpl) {
    case 1:
      launch_heads<1>(heads_per_block, p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits,
                      partials, out, stream);
      break;
    case 2:
      launch_heads<2>(heads_per_block, p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits,
                      partials, out, stream);
      break;
    case 4:
      launch_heads<4>(heads_per_block, p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits,
                      partials, out, stream);
      break;
    default:
      launch_heads<8>(heads_per_block, p, q, k_cache, v_cache, positions, slot_offsets, slot_table, n_tokens, n_splits,
                      partials, out, stream);
      break;
  }
  if (n_splits > 1) {
    launch_chained("merge_splits_kernel", merge_splits_kernel, dim3(n_tokens, p.n_head), dim3(128), 0, stream, p,
                   n_splits, partials, out);
  }
}

}  // namespace tessera::cuda
