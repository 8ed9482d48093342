// AVX-512 VNNI kernels for the interleaved layouts (interleaved.h): each 32-bit lane of a vector is one of the 16
// rows of a tile, so vpdpbusd multiplies 4 columns of 16 rows by 4 broadcast activation bytes at once, the per-row
// scales apply lane by lane, and the 16 row results are stored as they are.
#include <immintrin.h>

// GCC 12 reports its own intrinsics' placeholder operands (_mm512_undefined_epi32) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "quant/interleaved_tiles.h"

namespace tessera::quant::detail {
namespace {

// Tokens per pass over a row group's tiles: the decoded weights of a sub-block stay in registers for all of them.
constexpr int kTokens = 8;

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
// A load for a value that several instructions use. GCC folds a plain load into each of them as a memory operand,
// reading the same bytes again per use, and the load ports are what the one-token kernels run out of first.
inline __m512i load512_once(const void* p) {
  __m512i v = _mm512_loadu_si512(p);
  asm("" : "+v"(v));
  return v;
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512 f16x16(const uint16_t* p) { return _mm512_cvtph_ps(load256(p)); }

// acc + vpdpbusd(w, the 4 activation bytes at x in every lane), the bytes read by the instruction itself as a
// {1to16} broadcast operand: GCC does not fold _mm512_set1_epi32 into vpdpbusd, and a separate vpbroadcastd per
// product is a quarter of a one-token kernel's instructions.
inline __m512i dpbusd_broadcast(__m512i acc, __m512i w, const int8_t* x) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int8_t(*)[4]>(x)));
  return acc;
}

// Software prefetch (interleaved.h's WeightPrefetch): each of a tile's 8 steps asks for its share of the tile that
// starts kPrefetchBytes ahead. The last step's share runs a few lines further (prefetched again later): a fixed
// count per step needs no loop and no branch, which cost more instructions than the step's arithmetic. The
// distance is in bytes whatever the tile (what it must cover is the memory's latency at the rate one core reads):
// two Q4_K tiles, 4.7 KB. Two Q6_K tiles (6.7 KB) for Q6_K instead were slower
// (docs/notes/2026-11-27-cpu-kv-cache-and-prefetch.md).
constexpr int kPrefetchBytes = 2 * sizeof(TileQ4_K);
// A pass of kTokens tokens (a batched decode step's, or the first over a row group of more tokens) asks further
// ahead: at its slower pace through the tiles, two tiles in flight left a decode step of several sequences waiting
// on memory (docs/notes/2026-12-05-cpu-batched-decode.md).
constexpr int kBatchPrefetchBytes = 4 * sizeof(TileQ4_K);
template <int NT>
constexpr int kPrefetchDistance = NT == kTokens ? kBatchPrefetchBytes : kPrefetchBytes;
// A pass of fewer than kTokens tokens is the last one over its row group (for decode, the only one), and follows
// the WeightPrefetch asked for; a pass of kTokens leaves its tiles in L1 for the next one.
template <WeightPrefetch P, int NT>
constexpr bool kPrefetches = NT == kTokens || P != WeightPrefetch::None;
template <WeightPrefetch P, int NT>
constexpr auto kPrefetchHint = NT == kTokens || P == WeightPrefetch::L1 ? _MM_HINT_T0 : _MM_HINT_NTA;
template <WeightPrefetch P, int NT, class Tile>
inline void prefetch_ahead(const Tile* tile, int step) {
  if constexpr (kPrefetches<P, NT>) {
    constexpr int kLines = (sizeof(Tile) + 63) / 64, kPerStep = (kLines + 7) / 8;
    const char* base = reinterpret_cast<const char*>(tile) + kPrefetchDistance<NT> + 64 * kPerStep * step;
#pragma GCC unroll 8
    for (int l = 0; l < kPerStep; ++l) _mm_prefetch(base + 64 * l, kPrefetchHint<P, NT>);
  }
}

// acc + vpdpwssd(w, the int16 pair at x in every lane), the pair read by the instruction as a {1to16} broadcast
// operand, as in dpbusd_broadcast.
inline __m512i dpwssd_broadcast(__m512i acc, __m512i w, const int16_t* x) {
  asm("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int16_t(*)[2]>(x)));
  return acc;
}

inline const BlockQ8_K* activation_block(const uint8_t* x, size_t x_stride, int t, int64_t i) {
  return reinterpret_cast<const BlockQ8_K*>(x + t * x_stride) + i;
}

// Bit q of each byte of qh moved to bit 4 (16-bit shifts of at most 4 keep every bit within its byte).
inline __m512i fifth_bit(__m512i qh, int q) {
  const __m512i shifted = q <= 4 ? _mm512_slli_epi16(qh, 4 - q) : _mm512_srli_epi16(qh, q - 4);
  return _mm512_and_si512(shifted, _mm512_set1_epi8(0x10));
}

// One 16-row group (its n_blocks tiles) times NT activation rows: y[t * ldy + r] for r < 16. Q4_K and Q5_K
// (TileQ5_K's sub-blocks add the fifth bits of the levels).
template <class Tile, WeightPrefetch P, int NT>
void q45_k_group(const Tile* tiles, int64_t n_blocks, const uint8_t* x, size_t x_stride, float* y, int64_t ldy) {
  constexpr bool kFifthBit = std::is_same_v<Tile, TileQ5_K>;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n_blocks; ++i) {
    const Tile& tile = tiles[i];
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
#pragma GCC unroll 1
    for (int k = 0; k < 8; ++k) {
      prefetch_ahead<P, NT>(&tile, k);
      const __m512i scale = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tile.scales[k])));
      // w[2p]: columns 8p..8p+3 of the sub-block, w[2p + 1]: columns 8p+4..8p+7. For one token, Q4_K leaves the
      // high nibbles in place (16 x level, one operation less per vector) and shifts its odd sum, which comes out
      // 16 times too large, back exactly; with more tokens that shift would be paid per token.
      constexpr bool kHighInPlace = !kFifthBit && NT == 1;
      __m512i w[8];
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m512i packed = load512_once(tile.sub[k].qs[p]);
        w[2 * p] = _mm512_and_si512(packed, low4);
        w[2 * p + 1] = kHighInPlace ? _mm512_andnot_si512(low4, packed)
                                    : _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
      }
      if constexpr (kFifthBit) {
        const __m512i qh = load512(tile.sub[k].qh);
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) w[q] = _mm512_or_si512(w[q], fifth_bit(qh, q));
      }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const int8_t* xq = activation_block(x, x_stride, t, i)->qs + 32 * k;
        __m512i even = dpbusd_broadcast(_mm512_setzero_si512(), w[0], xq);
        __m512i odd = dpbusd_broadcast(_mm512_setzero_si512(), w[1], xq + 4);
#pragma GCC unroll 4
        for (int p = 1; p < 4; ++p) {
          even = dpbusd_broadcast(even, w[2 * p], xq + 8 * p);
          odd = dpbusd_broadcast(odd, w[2 * p + 1], xq + 8 * p + 4);
        }
        if constexpr (kHighInPlace) odd = _mm512_srai_epi32(odd, 4);
        sum[t] = _mm512_add_epi32(sum[t], _mm512_mullo_epi32(_mm512_add_epi32(even, odd), scale));
      }
    }
    // The mins: sum over sub-blocks of min[k] * (sum of the 32 activations of sub-block k), two per vpdpwssd.
    const __m512 d = f16x16(tile.d), dmin = f16x16(tile.dmin);
    __m512i min_pairs[4];
    for (int j = 0; j < 4; ++j) min_pairs[j] = _mm512_cvtepu8_epi16(load256(tile.min_pairs[j]));
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K* xb = activation_block(x, x_stride, t, i);
      // Adjacent bsums added: int16 sums of sub-blocks (0,1), (2,3) in 32-bit lanes 0, 1 and (4,5), (6,7) in 4, 5.
      const __m256i bsums = load256(xb->bsums);
      alignas(32) int32_t pairs[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pairs), _mm256_hadd_epi16(bsums, bsums));
      __m512i mins = _mm512_dpwssd_epi32(_mm512_setzero_si512(), min_pairs[0], _mm512_set1_epi32(pairs[0]));
      mins = _mm512_dpwssd_epi32(mins, min_pairs[1], _mm512_set1_epi32(pairs[1]));
      mins = _mm512_dpwssd_epi32(mins, min_pairs[2], _mm512_set1_epi32(pairs[4]));
      mins = _mm512_dpwssd_epi32(mins, min_pairs[3], _mm512_set1_epi32(pairs[5]));
      const __m512 xd = _mm512_set1_ps(xb->d);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), _mm512_mul_ps(d, xd), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, xd), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}

template <WeightPrefetch P, int NT>
void q6_k_group(const TileQ6_K* tiles, int64_t n_blocks, const uint8_t* x, size_t x_stride, float* y, int64_t ldy) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n_blocks; ++i) {
    const TileQ6_K& tile = tiles[i];
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
#pragma GCC unroll 1
    for (int j = 0; j < 8; ++j) {
      prefetch_ahead<P, NT>(&tile, j);
      const TileQ6_K::Step& step = tile.steps[j];
      // Lane r: int16 scales of sub-blocks 2j and 2j + 1 of row r.
      const __m512i scale_pair = _mm512_cvtepi8_epi16(load256(step.scale_pairs));
      const __m512i scales[2] = {_mm512_srai_epi32(_mm512_slli_epi32(scale_pair, 16), 16),
                                 _mm512_srai_epi32(scale_pair, 16)};
      // Levels are 0..63 for values level - 32: the 32 comes off as -32 * scale * (sum of the 16 activations).
      const __m512i offset_pair = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_slli_epi16(scale_pair, 5));
#pragma GCC unroll 2
      for (int e = 0; e < 2; ++e) {
        const int k = 2 * j + e;
        const __m512i ql0 = load512_once(step.sub[e].ql[0]), ql1 = load512_once(step.sub[e].ql[1]);
        const __m512i qh = load512_once(step.sub[e].qh);
        // w[c]: columns 4c..4c+3 of the sub-block.
        const __m512i w[4] = {
            _mm512_or_si512(_mm512_and_si512(ql0, low4), _mm512_and_si512(_mm512_slli_epi16(qh, 4), bits45)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql0, 4), low4),
                            _mm512_and_si512(_mm512_slli_epi16(qh, 2), bits45)),
            _mm512_or_si512(_mm512_and_si512(ql1, low4), _mm512_and_si512(qh, bits45)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql1, 4), low4),
                            _mm512_and_si512(_mm512_srli_epi16(qh, 2), bits45))};
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          const int8_t* xq = activation_block(x, x_stride, t, i)->qs + 16 * k;
          __m512i s = dpbusd_broadcast(_mm512_setzero_si512(), w[0], xq);
          s = dpbusd_broadcast(s, w[1], xq + 4);
          s = dpbusd_broadcast(s, w[2], xq + 8);
          s = dpbusd_broadcast(s, w[3], xq + 12);
          sum[t] = _mm512_add_epi32(sum[t], _mm512_mullo_epi32(s, scales[e]));
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        sum[t] = dpwssd_broadcast(sum[t], offset_pair, activation_block(x, x_stride, t, i)->bsums + 2 * j);
      }
    }
    const __m512 d = f16x16(tile.d);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512 xd = _mm512_set1_ps(activation_block(x, x_stride, t, i)->d);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), _mm512_mul_ps(d, xd), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}

// Q4_0 and Q8_0, one 32-column block per tile. The levels are unsigned (value + 8, value + 128); offsets[t *
// n_blocks + i] is that offset times the sum of token t's activations in block i, taken off once per block.
template <class Tile, WeightPrefetch P, int NT>
void block32_group(const Tile* tiles, int64_t n_blocks, const uint8_t* x, size_t x_stride, const int32_t* offsets,
                   float* y, int64_t ldy) {
  constexpr bool kNibbles = std::is_same_v<Tile, TileQ4_0>;
  constexpr int kLines = (sizeof(Tile) + 63) / 64 + 1;  // tiles are not line-aligned
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n_blocks; ++i) {
    const Tile& tile = tiles[i];
    // The same distance in bytes, not two of these smaller tiles (0.6 KB for Q4_0, 1.1 KB for Q8_0): at least as
    // fast (docs/notes/2026-11-27-cpu-interleaved-decode.md).
    if constexpr (kPrefetches<P, NT>) {
      const char* ahead = reinterpret_cast<const char*>(&tile) + kPrefetchDistance<NT>;
      for (int l = 0; l < kLines; ++l) _mm_prefetch(ahead + 64 * l, kPrefetchHint<P, NT>);
    }
    __m512i w[8];  // w[q]: columns 4q..4q+3
    if constexpr (kNibbles) {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m512i packed = load512_once(tile.qs[p]);
        w[2 * p] = _mm512_and_si512(packed, low4);
        w[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
      }
    } else {
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) w[q] = load512(tile.qs[q]);
    }
    const __m512 d = f16x16(tile.d);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_0& xb = reinterpret_cast<const BlockQ8_0*>(x + t * x_stride)[i];
      __m512i even = dpbusd_broadcast(_mm512_setzero_si512(), w[0], xb.qs);
      __m512i odd = dpbusd_broadcast(_mm512_setzero_si512(), w[1], xb.qs + 4);
#pragma GCC unroll 4
      for (int p = 1; p < 4; ++p) {
        even = dpbusd_broadcast(even, w[2 * p], xb.qs + 8 * p);
        odd = dpbusd_broadcast(odd, w[2 * p + 1], xb.qs + 8 * p + 4);
      }
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(even, odd), _mm512_set1_epi32(offsets[t * n_blocks + i]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, _mm512_set1_ps(_cvtsh_ss(xb.d))), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}

// offset * (sum of each Q8_0 activation block) for n_tokens rows of n_blocks blocks.
void activation_offsets(const uint8_t* x, size_t x_stride, int64_t n_tokens, int64_t n_blocks, int offset,
                        int32_t* out) {
  const __m256i ones = _mm256_set1_epi8(1);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const auto* blocks = reinterpret_cast<const BlockQ8_0*>(x + t * x_stride);
    for (int64_t i = 0; i < n_blocks; ++i) {
      // Sums of 4 bytes (vpdpbusd with unsigned ones), then of the 8 lanes.
      const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, load256(blocks[i].qs));
      __m128i h = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
      h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
      h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
      out[t * n_blocks + i] = offset * _mm_cvtsi128_si32(h);
    }
  }
}

// Row groups outermost, so a group's tiles stay in cache while every token tile passes over them. kOffset is the
// unsigned levels' offset of the 32-column formats (0 for the K-quants, which carry it in their scales and mins).
template <class Tile, template <WeightPrefetch, int> class Group, WeightPrefetch P, int kColumns, int kOffset = 0>
void gemm_groups(const void* interleaved, int64_t n_cols, int64_t row_begin, int64_t row_end, const void* xq,
                 size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy) {
  const int64_t n_blocks = n_cols / kColumns;
  const auto* x = static_cast<const uint8_t*>(xq);
  thread_local std::vector<int32_t> offset_storage;
  const int32_t* offsets = nullptr;
  if constexpr (kOffset != 0) {
    offset_storage.resize(static_cast<size_t>(n_tokens * n_blocks));
    activation_offsets(x, xq_row_bytes, n_tokens, n_blocks, kOffset, offset_storage.data());
    offsets = offset_storage.data();
  }
  for (int64_t g = row_begin / 16; g < row_end / 16; ++g) {
    const Tile* tiles = static_cast<const Tile*>(interleaved) + g * n_blocks;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokens) {
      const int nt = static_cast<int>(std::min<int64_t>(kTokens, n_tokens - t0));
      const uint8_t* xt = x + t0 * xq_row_bytes;
      const int32_t* ot = offsets ? offsets + t0 * n_blocks : nullptr;
      float* yt = y + t0 * ldy + 16 * g;
      switch (nt) {
        case 1: Group<P, 1>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 2: Group<P, 2>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 3: Group<P, 3>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 4: Group<P, 4>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 5: Group<P, 5>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 6: Group<P, 6>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        case 7: Group<P, 7>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
        default: Group<P, kTokens>::run(tiles, n_blocks, xt, xq_row_bytes, ot, yt, ldy); break;
      }
    }
  }
}

template <WeightPrefetch P, int NT>
struct Q4_0Group {
  static void run(const TileQ4_0* tiles, int64_t nb, const uint8_t* x, size_t stride, const int32_t* offsets, float* y,
                  int64_t ldy) {
    block32_group<TileQ4_0, P, NT>(tiles, nb, x, stride, offsets, y, ldy);
  }
};
template <WeightPrefetch P, int NT>
struct Q8_0Group {
  static void run(const TileQ8_0* tiles, int64_t nb, const uint8_t* x, size_t stride, const int32_t* offsets, float* y,
                  int64_t ldy) {
    block32_group<TileQ8_0, P, NT>(tiles, nb, x, stride, offsets, y, ldy);
  }
};
template <WeightPrefetch P, int NT>
struct Q4_KGroup {
  static void run(const TileQ4_K* tiles, int64_t nb, const uint8_t* x, size_t stride, const int32_t*, float* y,
                  int64_t ldy) {
    q45_k_group<TileQ4_K, P, NT>(tiles, nb, x, stride, y, ldy);
  }
};
template <WeightPrefetch P, int NT>
struct Q5_KGroup {
  static void run(const TileQ5_K* tiles, int64_t nb, const uint8_t* x, size_t stride, const int32_t*, float* y,
                  int64_t ldy) {
    q45_k_group<TileQ5_K, P, NT>(tiles, nb, x, stride, y, ldy);
  }
};
template <WeightPrefetch P, int NT>
struct Q6_KGroup {
  static void run(const TileQ6_K* tiles, int64_t nb, const uint8_t* x, size_t stride, const int32_t*, float* y,
                  int64_t ldy) {
    q6_k_group<P, NT>(tiles, nb, x, stride, y, ldy);
  }
};

template <WeightPrefetch P>
InterleavedGemmKernel kernel_for(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::Q4_0: return gemm_groups<TileQ4_0, Q4_0Group, P, kQK, 8>;
    case GgmlType::Q8_0: return gemm_groups<TileQ8_0, Q8_0Group, P, kQK, 128>;
    case GgmlType::Q4_K: return gemm_groups<TileQ4_K, Q4_KGroup, P, kQK_K>;
    case GgmlType::Q5_K: return gemm_groups<TileQ5_K, Q5_KGroup, P, kQK_K>;
    case GgmlType::Q6_K: return gemm_groups<TileQ6_K, Q6_KGroup, P, kQK_K>;
    default: return nullptr;
  }
}

}  // namespace

InterleavedGemmKernel interleaved_kernel_avx512(GgmlType weight_type, WeightPrefetch prefetch) {
  switch (prefetch) {
    case WeightPrefetch::None: return kernel_for<WeightPrefetch::None>(weight_type);
    case WeightPrefetch::NonTemporal: return kernel_for<WeightPrefetch::NonTemporal>(weight_type);
    case WeightPrefetch::L1: return kernel_for<WeightPrefetch::L1>(weight_type);
  }
  return nullptr;
}

}  // namespace tessera::quant::detail
