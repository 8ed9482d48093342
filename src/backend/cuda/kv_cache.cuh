// Addressing and reading/writing the paged KV cache from device code.
// - A sequence's blocks are a row of the step's block table, and its key j lives in cache slot
//   blocks[j / block_size] * block_size + j % block_size (block_size = 1 << shift).
// - The keys a token sees (VisibleKeys): with a sliding window, its sinks [0, sink_end) and its window
//   [window_begin, position]; kernels walk them by index v in [0, count()).
// - Values in a cache row (KvCache, kernels.h) by pairs: load_pair and store_pair for each format. The quantized
//   formats' stores quantize a block of 32 values with the 16 lanes that hold its 16 pairs, as the CPU backend
//   does (Q8_0: llama.cpp's activation rounding, 127 / amax and ties to even; Q4_0: ggml's reference), so that
//   both backends hold the same bytes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace tessera::cuda {

__device__ __forceinline__ int32_t kv_slot(const int32_t* __restrict__ blocks, int j, int shift) {
  return (blocks[j >> shift] << shift) | (j & ((1 << shift) - 1));
}

struct VisibleKeys {
  int sink_end, window_begin, position;
  __device__ int count() const { return sink_end + position + 1 - window_begin; }
  // The position of the v-th visible key.
  __device__ int key(int v) const { return v < sink_end ? v : window_begin + (v - sink_end); }
  // The index of the key at `position`, or -1 when it is not visible.
  __device__ int index_of(int key_position) const {
    if (key_position > position) return -1;
    if (key_position < sink_end) return key_position;
    return key_position >= window_begin ? sink_end + key_position - window_begin : -1;
  }
};

// windows[t] = (window_begin, sink_end) of token t (KeyWindow, kernels.h); null: no token has a window.
__device__ __forceinline__ VisibleKeys visible_keys(const int2* __restrict__ windows, int t, int position) {
  const int2 w = windows ? windows[t] : make_int2(0, 0);
  return VisibleKeys{w.y, w.x, position};
}

// ---- values of a row --------------------------------------------------------------------------------------------
// `row` points at a row's data (values, or a quantized format's quants), `scales` at its scales (quantized formats;
// one f16 per 32 values); i indexes the row's values. Whole blocks of a quantized row start at multiples of 32.

template <KvFormat F>
__device__ __forceinline__ float load_value(const uint8_t* row, const __half* scales, int i) {
  if constexpr (F == KvFormat::F32) {
    return reinterpret_cast<const float*>(row)[i];
  } else if constexpr (F == KvFormat::F16) {
    return __half2float(reinterpret_cast<const __half*>(row)[i]);
  } else if constexpr (F == KvFormat::BF16) {
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]);
  } else if constexpr (F == KvFormat::Q8_0) {
    return static_cast<float>(reinterpret_cast<const int8_t*>(row)[i]) * __half2float(scales[i / kKvQuantBlock]);
  } else {
    const int j = i % kKvQuantBlock;
    const uint8_t byte = row[i / kKvQuantBlock * 16 + j % 16];
    const int q = (j < 16 ? byte & 0xF : byte >> 4) - 8;
    return static_cast<float>(q) * __half2float(scales[i / kKvQuantBlock]);
  }
}

// Values i and i + 1, i even.
template <KvFormat F>
__device__ __forceinline__ float2 load_pair(const uint8_t* row, const __half* scales, int i) {
  if constexpr (F == KvFormat::F32) {
    return reinterpret_cast<const float2*>(row)[i / 2];
  } else if constexpr (F == KvFormat::F16) {
    return __half22float2(reinterpret_cast<const __half2*>(row)[i / 2]);
  } else if constexpr (F == KvFormat::BF16) {
    return __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(row)[i / 2]);
  } else if constexpr (F == KvFormat::Q8_0) {
    const char2 q = reinterpret_cast<const char2*>(row)[i / 2];
    const float d = __half2float(scales[i / kKvQuantBlock]);
    return make_float2(static_cast<float>(q.x) * d, static_cast<float>(q.y) * d);
  } else {
    const int j = i % kKvQuantBlock, shift = j < 16 ? 0 : 4;
    const uchar2 b = *reinterpret_cast<const uchar2*>(row + i / kKvQuantBlock * 16 + j % 16);
    const float d = __half2float(scales[i / kKvQuantBlock]);
    return make_float2(static_cast<float>(((b.x >> shift) & 0xF) - 8) * d,
                       static_cast<float>(((b.y >> shift) & 0xF) - 8) * d);
  }
}

// The same with the format known only at run time (the generic attention kernel).
__device__ __forceinline__ float load_value(KvFormat f, const uint8_t* row, const __half* scales, int i) {
  switch (f) {
    case KvFormat::F32: return load_value<KvFormat::F32>(row, scales, i);
    case KvFormat::F16: return load_value<KvFormat::F16>(row, scales, i);
    case KvFormat::BF16: return load_value<KvFormat::BF16>(row, scales, i);
    case KvFormat::Q8_0: return load_value<KvFormat::Q8_0>(row, scales, i);
    case KvFormat::Q4_0: return load_value<KvFormat::Q4_0>(row, scales, i);
  }
  return 0.0f;
}
__device__ __forceinline__ float2 load_pair(KvFormat f, const uint8_t* row, const __half* scales, int i) {
  switch (f) {
    case KvFormat::F32: return load_pair<KvFormat::F32>(row, scales, i);
    case KvFormat::F16: return load_pair<KvFormat::F16>(row, scales, i);
    case KvFormat::BF16: return load_pair<KvFormat::BF16>(row, scales, i);
    case KvFormat::Q8_0: return load_pair<KvFormat::Q8_0>(row, scales, i);
    case KvFormat::Q4_0: return load_pair<KvFormat::Q4_0>(row, scales, i);
  }
  return make_float2(0.0f, 0.0f);
}

// The lanes of the 16-lane half of the warp this lane is in: those that quantize one block together.
__device__ __forceinline__ unsigned block_lanes() { return 0xFFFFu << (threadIdx.x & 16); }

// Stores values i, i + 1 (i even) of a row. For the quantized formats, the 16 lanes of a half warp hold the 16
// pairs of one block, pair (i % 32) / 2 in lane threadIdx.x % 16, and call this together.
template <KvFormat F>
__device__ __forceinline__ void store_pair(uint8_t* row, __half* scales, int i, float2 x) {
  if constexpr (F == KvFormat::F32) {
    reinterpret_cast<float2*>(row)[i / 2] = x;
  } else if constexpr (F == KvFormat::F16) {
    reinterpret_cast<__half2*>(row)[i / 2] = __floats2half2_rn(x.x, x.y);
  } else if constexpr (F == KvFormat::BF16) {
    reinterpret_cast<__nv_bfloat162*>(row)[i / 2] = __floats2bfloat162_rn(x.x, x.y);
  } else if constexpr (F == KvFormat::Q8_0) {
    const unsigned lanes = block_lanes();
    float amax = fmaxf(fabsf(x.x), fabsf(x.y));
#pragma unroll
    for (int o = 8; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(lanes, amax, o));
    const float inverse = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    const char2 q = make_char2(static_cast<signed char>(__float2int_rn(__fmul_rn(x.x, inverse))),
                               static_cast<signed char>(__float2int_rn(__fmul_rn(x.y, inverse))));
    reinterpret_cast<char2*>(row)[i / 2] = q;
    if (i % kKvQuantBlock == 0) scales[i / kKvQuantBlock] = __float2half_rn(__fdiv_rn(amax, 127.0f));
  } else {
    // The value of largest magnitude (the first of equal ones) maps to -8.
    const unsigned lanes = block_lanes();
    const int j = i % kKvQuantBlock;
    const bool second = fabsf(x.y) > fabsf(x.x);
    float extreme = second ? x.y : x.x;
    int at = second ? j + 1 : j;
#pragma unroll
    for (int o = 8; o > 0; o /= 2) {
      const float other = __shfl_xor_sync(lanes, extreme, o);
      const int other_at = __shfl_xor_sync(lanes, at, o);
      if (fabsf(other) > fabsf(extreme) || (fabsf(other) == fabsf(extreme) && other_at < at)) {
        extreme = other;
        at = other_at;
      }
    }
    const float d = __fdiv_rn(extreme, -8.0f);
    const float inverse = d != 0.0f ? __frcp_rn(d) : 0.0f;
    const int q0 = min(15, static_cast<int>(static_cast<int8_t>(__fadd_rn(__fmul_rn(x.x, inverse), 8.5f))));
    const int q1 = min(15, static_cast<int>(static_cast<int8_t>(__fadd_rn(__fmul_rn(x.y, inverse), 8.5f))));
    // Byte k of the block holds values k (low nibble) and k + 16 (high nibble): the lanes of values 0..15 take
    // the high nibbles from the lanes 8 above.
    const int hi0 = __shfl_down_sync(lanes, q0, 8, 16), hi1 = __shfl_down_sync(lanes, q1, 8, 16);
    if (j < 16) {
      *reinterpret_cast<uchar2*>(row + i / kKvQuantBlock * 16 + j) =
          make_uchar2(static_cast<unsigned char>(q0 | (hi0 << 4)), static_cast<unsigned char>(q1 | (hi1 << 4)));
    }
    if (j == 0) scales[i / kKvQuantBlock] = __float2half_rn(d);
  }
}

__device__ __forceinline__ void store_pair(KvFormat f, uint8_t* row, __half* scales, int i, float2 x) {
  switch (f) {
    case KvFormat::F32: store_pair<KvFormat::F32>(row, scales, i, x); return;
    case KvFormat::F16: store_pair<KvFormat::F16>(row, scales, i, x); return;
    case KvFormat::BF16: store_pair<KvFormat::BF16>(row, scales, i, x); return;
    case KvFormat::Q8_0: store_pair<KvFormat::Q8_0>(row, scales, i, x); return;
    case KvFormat::Q4_0: store_pair<KvFormat::Q4_0>(row, scales, i, x); return;
  }
}

// Where slot's row starts in a cache of `format` with rows of kv_dim values (kernels.h).
__device__ __forceinline__ uint8_t* row_data(const KvCache& c, KvFormat f, int64_t slot, int kv_dim) {
  return c.data + slot * kv_data_bytes(f, kv_dim);
}
__device__ __forceinline__ __half* row_scales(const KvCache& c, int64_t slot, int kv_dim) {
  return c.scales + slot * (kv_dim / kKvQuantBlock);
}

// Values per thread group of the kernels that store whole rows pair by pair: a head, or the 32 values of a block
// that spans heads (a quantized format and a head dimension under 32).
__host__ __device__ inline int kv_store_chunk(KvFormats formats, int head_dim) {
  const bool quantized = formats.k == KvFormat::Q8_0 || formats.k == KvFormat::Q4_0 || formats.v == KvFormat::Q8_0 ||
                         formats.v == KvFormat::Q4_0;
  return quantized && head_dim < kKvQuantBlock ? kKvQuantBlock : head_dim;
}

}  // namespace tessera::cuda
