// Prompt attention: flash attention on the tensor cores (mma.sync m16n8k16, f16 operands, f32 accumulators).
// Nothing of size keys x queries is written to memory: a block takes 64 rows of (query token, query head) pairs
// that share one KV head, walks the sequence's keys in tiles gathered from the paged cache (through the slot
// table) into shared memory, the next tile in flight while the current one is used, and keeps each row's running
// maximum, sum and weighted values in registers (online softmax). With an f16 cache cp.async copies the tiles;
// with q8_0 or q4_0 keys or values, each thread loads its share of the next tile's quants and scales into
// registers before the current tile's products and decodes them to f16 in shared memory after (no f16 copy of
// the cache). With a sliding window the block walks the tiles of its rows' sinks and windows only.
//
// The scores' C fragments of two adjacent 8-key tiles are, rounded to f16, the A fragment of the weights for
// the P.V product: the softmax never leaves the registers.
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_cache.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/mma.cuh"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kWarpRows = 16;                 // an mma's M
constexpr int kBlockRows = kWarps * kWarpRows;  // (query token, query head) rows per block
constexpr int kMaxHeadDim = 128;              // the output accumulators take head_dim / 2 registers per thread

// D: head_dim rounded up to a multiple of 16 (an mma's K); the dimensions past head_dim are zeros.
template <int D>
struct FlashShape {
  static constexpr int kKeys = D <= 64 ? 64 : 32;  // keys per tile: the scores take kKeys / 2 registers
  static constexpr int kStride = D + 8;            // halves per shared row: 16 spare bytes put the 8 rows of an
                                                   // ldmatrix in different banks
  static constexpr int kChunks = D / 8;            // 16-byte pieces per row
};

struct FlashArgs {
  AttentionParams p;
  const float* q;            // [n_tokens][n_head][head_dim], rotated
  KvCache k_cache;           // rows of [n_head_kv][head_dim] (kernels.h)
  KvCache v_cache;
  const int32_t* positions;  // [n_tokens]
  const KeyWindow* windows;  // [n_tokens]
  const int32_t* blocks;     // the sequence's KV blocks (kv_cache.cuh)
  int row_begin;             // its tokens are row_begin .. row_begin + n_rows - 1 of the step
  int n_rows;
  int n_keys;
  float scale_log2;  // log2(e) / sqrt(head_dim): the softmax runs in base 2
  float* out;        // [n_tokens][n_head][head_dim]
  __half* out16;     // its f16 copy, or null
};

// 8 consecutive values of a cache row, from value `at` (a multiple of 8) on, as one thread fetches them into
// registers (raw: the f16 values; or 8 quants in .x, .y and the block's scale in .z) and decodes them to 8 f16
// values. Past the visible keys: zeros.
__device__ __forceinline__ uint4 fetch_chunk(const KvCache& c, KvFormat f, int64_t slot, int kv_dim, int at) {
  const uint8_t* row = row_data(c, f, slot, kv_dim);
  if (f == KvFormat::F16) return *reinterpret_cast<const uint4*>(row + 2 * at);
  const int j = at % kKvQuantBlock;
  const int offset = f == KvFormat::Q8_0 ? at : at / kKvQuantBlock * 16 + j % 16;
  const uint2 quants = *reinterpret_cast<const uint2*>(row + offset);
  return make_uint4(quants.x, quants.y, __half_as_ushort(row_scales(c, slot, kv_dim)[at / kKvQuantBlock]), 0);
}

__device__ __forceinline__ uint4 decode_chunk(KvFormat f, uint4 raw, int at) {
  if (f == KvFormat::F16) return raw;
  const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.z)));
  const int shift = at % kKvQuantBlock < 16 ? 0 : 4;
  uint32_t out[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t word = k < 2 ? raw.x : raw.y;
    const int b0 = (k % 2) * 16;  // bit offset of the pair's first byte in the word
    float x0, x1;
    if (f == KvFormat::Q8_0) {
      x0 = static_cast<float>(static_cast<int8_t>((word >> b0) & 0xFF));
      x1 = static_cast<float>(static_cast<int8_t>((word >> (b0 + 8)) & 0xFF));
    } else {
      x0 = static_cast<float>(static_cast<int>((word >> (b0 + shift)) & 0xF) - 8);
      x1 = static_cast<float>(static_cast<int>((word >> (b0 + 8 + shift)) & 0xF) - 8);
    }
    const __half2 h = __floats2half2_rn(x0 * d, x1 * d);
    out[k] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Grid: (blocks of kBlockRows rows of the sequence, KV heads). Row m of KV head kv is query token row_begin + m / group
// with query head kv * group + m % group, so the block's K/V tiles serve all query heads of the KV head (GQA).
// Token t sees keys 0..positions[t] (sinks and a window with a sliding window). The blocks of the latest tokens,
// which have the most keys, start first. kDirect: keys and values in f16, copied by cp.async. kWindowed: some
// token has a sliding window (without one, the window's bookkeeping costs registers that lower the occupancy).
template <int D, bool kDirect, bool kWindowed>
__global__ void __launch_bounds__(kWarps * 32) flash_prompt_attention_kernel(const FlashArgs a) {
  using Shape = FlashShape<D>;
  constexpr int kKeys = Shape::kKeys, kStride = Shape::kStride, kChunks = Shape::kChunks;
  constexpr int kItems = (kKeys * kChunks + kWarps * 32 - 1) / (kWarps * 32);  // chunks per thread of a tile
  __shared__ __align__(16) __half k_tile[2][kKeys][kStride];  // [buffer][key][dim]
  __shared__ __align__(16) __half v_tile[2][kKeys][kStride];
  __shared__ int warp_key_counts[kWarps], warp_window_begins[kWarps], warp_sink_ends[kWarps];
  allow_next_kernel();
  wait_for_previous_kernel();

  const AttentionParams& p = a.p;
  const int hd = p.head_dim, group = p.n_head / p.n_head_kv, kv_head = blockIdx.y;
  const int64_t q_dim = static_cast<int64_t>(p.n_head) * hd;
  const int kv_dim = p.n_head_kv * hd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int first_row = (gridDim.x - 1 - blockIdx.x) * kBlockRows + warp * kWarpRows;

  // This lane's two rows, first_row + g and first_row + g + 8: their token, query head and the keys they see
  // (last = -1 past the sequence's rows).
  int token[2], head[2], last[2], window_begin[2], sink_end[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int m = first_row + g + 8 * r, i = m / group;
    token[r] = i < a.n_rows ? a.row_begin + i : -1;
    head[r] = kv_head * group + m % group;
    last[r] = token[r] >= 0 ? min(a.positions[token[r]], a.n_keys - 1) : -1;
    window_begin[r] = 0;
    sink_end[r] = 0;
    if constexpr (kWindowed) {
      const KeyWindow w = token[r] >= 0 ? a.windows[token[r]] : make_int2(a.n_keys, 0);
      window_begin[r] = w.x;
      sink_end[r] = w.y;
    }
  }
  const int warp_keys = __reduce_max_sync(0xFFFFFFFFu, max(last[0], last[1]) + 1);
  int warp_window_begin = 0, warp_sink_end = 0;
  if constexpr (kWindowed) {
    warp_window_begin = __reduce_min_sync(0xFFFFFFFFu, min(window_begin[0], window_begin[1]));
    warp_sink_end = __reduce_max_sync(0xFFFFFFFFu, max(sink_end[0], sink_end[1]));
  }
  if (lane == 0) {
    warp_key_counts[warp] = warp_keys;
    warp_window_begins[warp] = warp_window_begin;
    warp_sink_ends[warp] = warp_sink_end;
  }

  // The queries as A fragments, rounded to f16 (as ggml does before its f16 dot products). Quantized keys meet
  // the query rounded first to 8 bits per block of 32 dims (a head under 32 dims is one block), as the CPU's
  // integer dot products and the decode kernel meet it. A row's dims are on the 4 lanes t of its quad: block b is
  // kk = 2b, 2b + 1 of each.
  float2 query[D / 16][2][2];  // [kk][upper][row]
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int upper = 0; upper < 2; ++upper) {
      const int dim = kk * 16 + upper * 8 + 2 * t;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        query[kk][upper][r] = make_float2(0.0f, 0.0f);
        if (token[r] >= 0 && dim < hd) {
          query[kk][upper][r] = *reinterpret_cast<const float2*>(a.q + token[r] * q_dim + head[r] * hd + dim);
        }
      }
    }
  }
  if constexpr (!kDirect) {
    if (p.k_format == KvFormat::Q8_0 || p.k_format == KvFormat::Q4_0) {
      constexpr int kBlockTiles = D >= 32 ? 2 : 1;  // kk per block of 32 dims (D = 16: one padded head)
#pragma unroll
      for (int kb = 0; kb < D / 16; kb += kBlockTiles) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float amax = 0;
#pragma unroll
          for (int kk = kb; kk < kb + kBlockTiles; ++kk) {
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              amax = fmaxf(amax, fmaxf(fabsf(query[kk][upper][r].x), fabsf(query[kk][upper][r].y)));
            }
          }
          amax = max_of_row(amax);
          const float inverse = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
          const float d = __half2float(__float2half_rn(__fdiv_rn(amax, 127.0f)));
#pragma unroll
          for (int kk = kb; kk < kb + kBlockTiles; ++kk) {
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              float2& v = query[kk][upper][r];
              v = make_float2(static_cast<float>(__float2int_rn(__fmul_rn(v.x, inverse))) * d,
                              static_cast<float>(__float2int_rn(__fmul_rn(v.y, inverse))) * d);
            }
          }
        }
      }
    }
  }
  uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int upper = 0; upper < 2; ++upper) {
#pragma unroll
      for (int r = 0; r < 2; ++r) q_frag[kk][r + 2 * upper] = pack_f16(query[kk][upper][r].x, query[kk][upper][r].y);
    }
  }
  __syncthreads();
  // The keys some row of the block sees: [0, block_sinks) and [block_window, block_keys) (one range when the
  // windows reach back to the sinks). Tiles cover the first, then the second from its tile on.
  int block_keys = 0, block_window = kWindowed ? a.n_keys : 0, block_sinks = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    block_keys = max(block_keys, warp_key_counts[w]);
    if constexpr (kWindowed) {
      block_window = min(block_window, warp_window_begins[w]);
      block_sinks = max(block_sinks, warp_sink_ends[w]);
    }
  }
  const int n_sink_tiles = (block_sinks + kKeys - 1) / kKeys;
  const int window_start = max(n_sink_tiles * kKeys, block_window / kKeys * kKeys);
  const int n_tiles = n_sink_tiles + (block_keys > window_start ? (block_keys - window_start + kKeys - 1) / kKeys : 0);
  auto tile_start = [&](int tile) { return tile < n_sink_tiles ? tile * kKeys : window_start + (tile - n_sink_tiles) * kKeys; };
  // Whether key `key` is one some row of the block sees (the others may lie in freed blocks).
  auto block_sees = [&](int key) { return key < block_keys && (!kWindowed || key < block_sinks || key >= block_window); };

  // cp.async (f16): keys key0.. of the KV head into buffer b (zeros past the block's keys and past head_dim).
  auto load_tile = [&](int key0, int b) {
    for (int c = threadIdx.x; c < kKeys * kChunks; c += kWarps * 32) {
      const int j = c / kChunks, dim = c % kChunks * 8, key = key0 + j;
      const bool valid = block_sees(key) && dim < hd;
      const int64_t at = valid ? kv_slot(a.blocks, key, a.p.kv_block_shift) * static_cast<int64_t>(kv_dim) + kv_head * hd + dim : 0;
      copy_16_async_or_zeros(&k_tile[b][j][dim], reinterpret_cast<const __half*>(a.k_cache.data) + at, valid);
      copy_16_async_or_zeros(&v_tile[b][j][dim], reinterpret_cast<const __half*>(a.v_cache.data) + at, valid);
    }
    commit_async_copies();
  };
  // Register staging (quantized formats): this thread's chunks of the tile at key0, then decoded into buffer b.
  uint4 k_raw[kItems], v_raw[kItems];
  auto fetch_tile = [&](int key0) {
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int c = threadIdx.x + it * kWarps * 32, j = c / kChunks, dim = c % kChunks * 8, key = key0 + j;
      k_raw[it] = v_raw[it] = make_uint4(0, 0, 0, 0);
      if (c < kKeys * kChunks && dim < hd && block_sees(key)) {
        const int64_t slot = kv_slot(a.blocks, key, a.p.kv_block_shift);
        k_raw[it] = fetch_chunk(a.k_cache, p.k_format, slot, kv_dim, kv_head * hd + dim);
        v_raw[it] = fetch_chunk(a.v_cache, p.v_format, slot, kv_dim, kv_head * hd + dim);
      }
    }
  };
  auto stage_tile = [&](int b) {
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int c = threadIdx.x + it * kWarps * 32, j = c / kChunks, dim = c % kChunks * 8;
      if (c >= kKeys * kChunks) continue;
      *reinterpret_cast<uint4*>(&k_tile[b][j][dim]) = decode_chunk(p.k_format, k_raw[it], kv_head * hd + dim);
      *reinterpret_cast<uint4*>(&v_tile[b][j][dim]) = decode_chunk(p.v_format, v_raw[it], kv_head * hd + dim);
    }
  };

  float o[D / 8][4] = {};                        // weighted values, unnormalized: [dim tile][C fragment]
  float row_max[2] = {-INFINITY, -INFINITY};    // of the scaled scores so far (base 2)
  float row_sum[2] = {0.0f, 0.0f};              // this lane's share of the sum of weights
  // With an f16 cache cp.async brings the next tile while this one is used. Otherwise the next tile's loads are in
  // flight during this tile's products, and the barrier after staging it both shows it to every warp and keeps
  // the buffer it will refill until all are done reading it.
  if (n_tiles > 0) {
    if constexpr (kDirect) {
      load_tile(tile_start(0), 0);
    } else {
      fetch_tile(tile_start(0));
      stage_tile(0);
    }
  }
  if constexpr (!kDirect) __syncthreads();
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int key0 = tile_start(tile), b = tile & 1;
    if constexpr (kDirect) {
      if (tile + 1 < n_tiles) {
        load_tile(tile_start(tile + 1), b ^ 1);
        wait_async_copies<1>();
      } else {
        wait_async_copies<0>();
      }
      __syncthreads();
    } else {
      if (tile + 1 < n_tiles) fetch_tile(tile_start(tile + 1));
    }
    if (key0 < warp_keys && (!kWindowed || key0 < warp_sink_end || key0 + kKeys > warp_window_begin)) {
      // s [key tile of 8][C fragment] = Q K^T for this tile's keys.
      float s[kKeys / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; n += 2) {
          uint32_t k_frag[4];  // B fragments of key tiles n and n + 1
          load_matrices(k_frag, &k_tile[b][n * 8 + lane % 8 + lane / 16 * 8][kk * 16 + lane / 8 % 2 * 8]);
          mma_m16n8k16(s[n], q_frag[kk], k_frag[0], k_frag[1]);
          mma_m16n8k16(s[n + 1], q_frag[kk], k_frag[2], k_frag[3]);
        }
      }
      // Online softmax: mask, new maxima, rescale what came before, weights exp2(s - max).
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, key = key0 + n * 8 + 2 * t + e % 2;
          const bool seen = key <= last[r] && (!kWindowed || key >= window_begin[r] || key < sink_end[r]);
          s[n][e] = seen ? s[n][e] * a.scale_log2 : -INFINITY;
          tile_max[r] = fmaxf(tile_max[r], s[n][e]);
        }
      }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float new_max = fmaxf(row_max[r], max_of_row(tile_max[r]));
        base[r] = new_max == -INFINITY ? 0.0f : new_max;  // a row with nothing visible yet keeps weights of 0
        const float rescale = exp2f(row_max[r] - base[r]);
        row_max[r] = new_max;
        row_sum[r] *= rescale;
#pragma unroll
        for (int d = 0; d < D / 8; ++d) o[d][2 * r] *= rescale, o[d][2 * r + 1] *= rescale;
      }
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] = exp2f(s[n][e] - base[e / 2]);
          row_sum[e / 2] += s[n][e];
        }
      }
      // o += P V, 16 keys at a time.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t p_frag[4] = {pack_f16(s[2 * kk][0], s[2 * kk][1]), pack_f16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int d = 0; d < D / 8; d += 2) {
          uint32_t v_frag[4];  // B fragments of dim tiles d and d + 1
          load_matrices_transposed(v_frag, &v_tile[b][kk * 16 + lane % 16][d * 8 + lane / 16 * 8]);
          mma_m16n8k16(o[d], p_frag, v_frag[0], v_frag[1]);
          mma_m16n8k16(o[d + 1], p_frag, v_frag[2], v_frag[3]);
        }
      }
    }
    if constexpr (!kDirect) {
      if (tile + 1 < n_tiles) stage_tile(b ^ 1);
    }
    __syncthreads();  // the next iteration refills the buffer read here
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (token[r] < 0) continue;
    const float sum = sum_of_row(row_sum[r]), inv_sum = sum > 0 ? 1.0f / sum : 0.0f;
    const int64_t at = token[r] * q_dim + head[r] * hd;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      const int dim = d * 8 + 2 * t;
      if (dim >= hd) continue;
      const float2 v = make_float2(o[d][2 * r] * inv_sum, o[d][2 * r + 1] * inv_sum);
      *reinterpret_cast<float2*>(a.out + at + dim) = v;
      if (a.out16) *reinterpret_cast<__half2*>(a.out16 + at + dim) = __floats2half2_rn(v.x, v.y);
    }
  }
}

int padded_head_dim(int head_dim) { return (head_dim + 15) / 16 * 16; }

template <int D, bool kDirect>
void launch_flash_windowed(const FlashArgs& a, dim3 grid, cudaStream_t stream) {
  if (a.windows) {
    launch_chained("flash_prompt_attention_kernel", flash_prompt_attention_kernel<D, kDirect, true>, grid,
                   dim3(kWarps * 32), 0, stream, a);
  } else {
    launch_chained("flash_prompt_attention_kernel", flash_prompt_attention_kernel<D, kDirect, false>, grid,
                   dim3(kWarps * 32), 0, stream, a);
  }
}

template <int D>
void launch_flash(const FlashArgs& a, cudaStream_t stream) {
  const dim3 grid((a.n_rows * (a.p.n_head / a.p.n_head_kv) + kBlockRows - 1) / kBlockRows, a.p.n_head_kv);
  if (a.p.k_format == KvFormat::F16 && a.p.v_format == KvFormat::F16) {
    launch_flash_windowed<D, true>(a, grid, stream);
  } else {
    launch_flash_windowed<D, false>(a, grid, stream);
  }
}

bool takes(KvFormat f) { return f == KvFormat::F16 || f == KvFormat::Q8_0 || f == KvFormat::Q4_0; }

}  // namespace

bool prompt_attention_supported(const AttentionParams& p) {
  // Rows of whole 16-byte pieces (8 values) for the tile loads, at most kMaxHeadDim (registers); the quantized
  // formats' blocks of 32 hold whole 8-value pieces.
  return takes(p.k_format) && takes(p.v_format) && p.head_dim % 8 == 0 && p.head_dim <= kMaxHeadDim &&
         p.n_head % p.n_head_kv == 0;
}

void prompt_attention(const AttentionParams& p, const float* q, const KvCache& k_cache, const KvCache& v_cache,
                      const int32_t* positions, const KeyWindow* windows, const int32_t* block_table,
                      const PromptSequence* sequences, int n_sequences, float* out, __half* out16,
                      cudaStream_t stream) {
  if (!prompt_attention_supported(p)) {
    throw std::runtime_error("prompt_attention needs keys and values in f16, q8_0 or q4_0 and a head dimension that "
                             "is a multiple of 8 up to " + std::to_string(kMaxHeadDim) + ", not " +
                             std::to_string(p.head_dim));
  }
  FlashArgs a{};
  a.p = p;
  a.q = q;
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.positions = positions;
  a.windows = windows;
  a.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(p.head_dim)));
  a.out = out;
  a.out16 = out16;
  for (int s = 0; s < n_sequences; ++s) {
    const PromptSequence& seq = sequences[s];
    if (seq.n_rows == 0) continue;
    a.row_begin = seq.row_begin;
    a.blocks = block_table + seq.table_offset;
    a.n_rows = seq.n_rows;
    a.n_keys = seq.n_keys;
    switch (padded_head_dim(p.head_dim)) {
      case 16: launch_flash<16>(a, stream); break;
      case 32: launch_flash<32>(a, stream); break;
      case 48:
      case 64: launch_flash<64>(a, stream); break;
      case 80: launch_flash<80>(a, stream); break;
      case 96: launch_flash<96>(a, stream); break;
      default: launch_flash<128>(a, stream); break;
    }
  }
}

}  // namespace tessera::cuda
