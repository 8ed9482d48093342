// The body of attend_block (and SwiGLU, which shares its exp), written once over a small table of vector operations `S` and compiled per instruction
// set by attention_avx2.cpp and attention_avx512.cpp, each with its own compiler flags. Everything here has
// internal linkage (anonymous namespace): if the two compilations shared a symbol, the linker could keep the
// AVX-512 copy and run it on an AVX2 machine. For the same reason this file uses nothing from the standard library.
//
// S provides: V (a vector of kLanes floats), Sum (double accumulator); kRows query rows per tile, kKeyVectors
// vectors of keys per score tile, kDimVectors vectors of head dimensions per output tile; zero, broadcast, load,
// load_first(p, n) / store_first(p, x, n) (the first n lanes, the rest of a load zero), store, sub, mul,
// add, div, fma(a, b, c) = a * b + c, max(a, b), min(a, b) (b where either is NaN), reduce_max, reduce_add,
// round (to nearest integer), scale_by_pow2(p, n) = p * 2^n for integral n in [-126, 127],
// zero_where_less(y, x, limit), round_to_f16, sum_zero, sum_add(acc, x) = acc + x in double, reduce_sum,
// transpose(rows) (a kLanes x kLanes block of floats, in place).
#pragma once

#include <cstdint>

#include "backend/cpu/attention.h"
#include "backend/cpu/attention_kernels.h"

namespace tessera::cpu::detail {
namespace {

constexpr int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }
constexpr int64_t min_of(int64_t a, int64_t b) { return a < b ? a : b; }

// exp(x) = 2^n exp(r) with n = round(x / ln2) and |r| <= ln2/2. ln2 is split in a high part with few mantissa bits
// (n * high is exact) and the rest (Cody and Waite), so r carries no cancellation error; exp(r) is its Taylor
// series to r^7, whose truncation error (0.35^8/8! < 1e-8, relative) is well under an ulp. Below kExpMinArg the
// result is 0: the clamp keeps 2^n a normal float, and such softmax weights are under 1e-38 (and 0 once rounded
// to f16).
template <class S>
typename S::V exp_of(typename S::V x) {
  using V = typename S::V;
  const V min_arg = S::broadcast(kExpMinArg);
  const V clamped = S::max(min_arg, x);  // a NaN x stays NaN
  const V n = S::round(S::mul(clamped, S::broadcast(1.44269504088896341f)));
  V r = S::fma(n, S::broadcast(-0.693145751953125f), clamped);
  r = S::fma(n, S::broadcast(-1.42860682030941723212e-6f), r);
  V p = S::broadcast(1.0f / 5040);
  p = S::fma(p, r, S::broadcast(1.0f / 720));
  p = S::fma(p, r, S::broadcast(1.0f / 120));
  p = S::fma(p, r, S::broadcast(1.0f / 24));
  p = S::fma(p, r, S::broadcast(1.0f / 6));
  p = S::fma(p, r, S::broadcast(0.5f));
  p = S::fma(p, r, S::broadcast(1.0f));
  p = S::fma(p, r, S::broadcast(1.0f));
  return S::zero_where_less(S::scale_by_pow2(p, n), x, min_arg);
}

template <class S>
void exp_array(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + S::kLanes <= n; i += S::kLanes) S::store(y + i, exp_of<S>(S::load(x + i)));
  if (i < n) S::store_first(y + i, exp_of<S>(S::load_first(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up. exp(-gate) is clamped to exp(88) (a finite float) so that
// scale_by_pow2 stays in range; for gate < -88 the result is then below 1e-36 instead of 0.
template <class S>
typename S::V swiglu_of(typename S::V gate, typename S::V up) {
  const typename S::V e = exp_of<S>(S::min(S::sub(S::zero(), gate), S::broadcast(88.0f)));
  return S::mul(S::div(gate, S::add(e, S::broadcast(1.0f))), up);
}

template <class S>
void swiglu_array(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + S::kLanes <= n; i += S::kLanes) S::store(out + i, swiglu_of<S>(S::load(gate + i), S::load(up + i)));
  if (i < n) {
    const int rest = static_cast<int>(n - i);
    S::store_first(out + i, swiglu_of<S>(S::load_first(gate + i, rest), S::load_first(up + i, rest)), rest);
  }
}

// Keys transposed into panels of kKeyTile keys, [panel][head_dim][kKeyTile], so that one load holds one dimension
// of a run of keys, the operand a tile of query rows multiplies by broadcast query values. Keys past n_keys, up to
// the panel's end, are zero. Blocks of kLanes keys x kLanes dimensions are transposed in registers: element by
// element, the transposition cost more than the decode step's products with the keys.
template <class S>
void transpose_keys(const float* keys, int64_t stride, int n_keys, int head_dim, float* panels) {
  using V = typename S::V;
  constexpr int kLanes = S::kLanes, kKeyTile = S::kKeyVectors * kLanes;
  const int64_t padded = round_up(n_keys, kKeyTile);
  const int whole_dims = head_dim / kLanes * kLanes;
  for (int64_t j0 = 0; j0 < padded; j0 += kLanes) {
    float* dst = panels + (j0 / kKeyTile) * head_dim * kKeyTile + j0 % kKeyTile;
    const int64_t present = min_of(kLanes, n_keys - j0);  // keys of this block below n_keys (may be none)
    for (int d0 = 0; d0 < whole_dims; d0 += kLanes) {
      V rows[kLanes];
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) rows[i] = i < present ? S::load(keys + (j0 + i) * stride + d0) : S::zero();
      S::transpose(rows);
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) S::store(dst + (d0 + i) * kKeyTile, rows[i]);
    }
    for (int d = whole_dims; d < head_dim; ++d) {
      for (int i = 0; i < kLanes; ++i) dst[d * kKeyTile + i] = i < present ? keys[(j0 + i) * stride + d] : 0;
    }
  }
}

// scores[i][j] = (queries[i] . key j) * scale for the kRows rows of the tile and j < n_padded (a multiple of the
// key tile), as a small matrix product: each key load serves every row of the tile.
template <class S>
void score_tile(const float* queries, int head_dim, const float* panels, int64_t n_padded, float scale,
                float* scores, int64_t score_stride) {
  using V = typename S::V;
  constexpr int kRows = S::kRows, kVecs = S::kKeyVectors, kKeyTile = kVecs * S::kLanes;
  const V scale_v = S::broadcast(scale);
  for (int64_t k0 = 0; k0 < n_padded; k0 += kKeyTile) {
    const float* panel = panels + k0 * head_dim;
    V acc[kRows][kVecs];
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) acc[i][v] = S::zero();
    for (int d = 0; d < head_dim; ++d) {
      V k[kVecs];
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) k[v] = S::load(panel + d * kKeyTile + v * S::kLanes);
#pragma GCC unroll 16
      for (int i = 0; i < kRows; ++i) {
        const V q = S::broadcast(queries[i * head_dim + d]);
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) acc[i][v] = S::fma(q, k[v], acc[i][v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) {
        S::store(scores + i * score_stride + k0 + v * S::kLanes, S::mul(acc[i][v], scale_v));
      }
  }
}

// Turns one row of scores into softmax weights over its first n_keys entries, in place, as attend() does:
// subtract the maximum, exp, sum in double, scale by the float reciprocal, round to f16 if asked. Entries n_keys
// to n_padded become 0.
template <class S>
void softmax_row(float* row, int n_keys, int64_t n_padded, bool f16_rounding) {
  using V = typename S::V;
  for (int64_t j = n_keys; j < n_padded; ++j) row[j] = -__builtin_inff();  // exp gives 0 there
  V max_v = S::broadcast(-__builtin_inff());
  for (int64_t j = 0; j < n_padded; j += S::kLanes) max_v = S::max(max_v, S::load(row + j));
  const V max_score = S::broadcast(S::reduce_max(max_v));
  // One double accumulator per vector of a key tile (n_padded is a multiple of it): the additions of one
  // accumulator form a chain, and a single chain would be slower than the exps.
  constexpr int kChains = S::kKeyVectors;
  typename S::Sum sums[kChains];
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) sums[c] = S::sum_zero();
  for (int64_t j = 0; j < n_padded; j += kChains * S::kLanes) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) {
      const V e = exp_of<S>(S::sub(S::load(row + j + c * S::kLanes), max_score));
      S::store(row + j + c * S::kLanes, e);
      sums[c] = S::sum_add(sums[c], e);
    }
  }
  double sum = 0;
  for (int c = 0; c < kChains; ++c) sum += S::reduce_sum(sums[c]);
  const V inv_sum = S::broadcast(static_cast<float>(1.0 / sum));
  for (int64_t j = 0; j < n_padded; j += S::kLanes) {
    V w = S::mul(S::load(row + j), inv_sum);
    if (f16_rounding) w = S::round_to_f16(w);
    S::store(row + j, w);
  }
}

// out_rows[i][d0 .. d0 + kVecs * kLanes) = sum over j < n_keys of weights[i][j] * value j, for the kRows rows of
// the tile; the last vector covers only last_lanes dimensions.
template <class S, int kRows, int kVecs>
void weighted_values_chunk(const float* weights, int64_t weight_stride, int n_keys, const float* values,
                           int64_t stride, int d0, int last_lanes, float* const* out_rows) {
  using V = typename S::V;
  V acc[kRows][kVecs];
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < kVecs; ++v) acc[i][v] = S::zero();
  for (int j = 0; j < n_keys; ++j) {
    const float* value = values + j * stride + d0;
    V x[kVecs];
#pragma GCC unroll 16
    for (int v = 0; v + 1 < kVecs; ++v) x[v] = S::load(value + v * S::kLanes);
    x[kVecs - 1] = S::load_first(value + (kVecs - 1) * S::kLanes, last_lanes);
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      const V w = S::broadcast(weights[i * weight_stride + j]);
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) acc[i][v] = S::fma(w, x[v], acc[i][v]);
    }
  }
  // Every row is stored (rows past the tile's end into a discarded buffer) and every loop over acc is unrolled
  // (the pragmas): with only constant indices into acc, GCC keeps it in registers instead of writing it back to
  // the stack on every key.
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v + 1 < kVecs; ++v) S::store(out_rows[i] + d0 + v * S::kLanes, acc[i][v]);
    S::store_first(out_rows[i] + d0 + (kVecs - 1) * S::kLanes, acc[i][kVecs - 1], last_lanes);
  }
}

template <class S, int kRows, int kVecs>
void weighted_values_chunk_of_width(int vectors, const float* weights, int64_t weight_stride, int n_keys,
                                    const float* values, int64_t stride, int d0, int last_lanes,
                                    float* const* out_rows) {
  if constexpr (kVecs > 1) {
    if (vectors < kVecs) {
      weighted_values_chunk_of_width<S, kRows, kVecs - 1>(vectors, weights, weight_stride, n_keys, values, stride,
                                                          d0, last_lanes, out_rows);
      return;
    }
  }
  weighted_values_chunk<S, kRows, kVecs>(weights, weight_stride, n_keys, values, stride, d0, last_lanes, out_rows);
}

// out_rows[i] = weights[i] V over the first n_keys values for kRows rows, in chunks of head dimensions that keep
// the accumulators in registers: kDimVectors vectors for a tile of rows; for a single row, half as many
// accumulators as a tile has, so that they and the values loaded for them fit the registers together.
template <class S, int kRows>
void weighted_values(const float* weights, int64_t weight_stride, int n_keys, const float* values, int64_t stride,
                     int head_dim, float* const* out_rows) {
  constexpr int kChunkVectors = kRows == 1 ? S::kDimVectors * S::kRows / 2 : S::kDimVectors;
  constexpr int kChunk = kChunkVectors * S::kLanes;
  for (int d0 = 0; d0 < head_dim; d0 += kChunk) {
    const int width = static_cast<int>(min_of(kChunk, head_dim - d0));
    const int vectors = (width + S::kLanes - 1) / S::kLanes;
    const int last_lanes = width - (vectors - 1) * S::kLanes;
    weighted_values_chunk_of_width<S, kRows, kChunkVectors>(vectors, weights, weight_stride, n_keys, values, stride,
                                                            d0, last_lanes, out_rows);
  }
}

// scores[j] = (query . key j) * scale for j < n_keys: one query row against the keys as they are stored. Without
// other rows to share each key load, transposing the keys into panels would cost more than the products.
template <class S>
void score_row(const float* query, int head_dim, const float* keys, int64_t stride, int n_keys, float scale,
               float* scores) {
  using V = typename S::V;
  for (int j = 0; j < n_keys; ++j) {
    const float* key = keys + j * stride;
    V acc = S::zero();
    int d = 0;
    for (; d + S::kLanes <= head_dim; d += S::kLanes) acc = S::fma(S::load(query + d), S::load(key + d), acc);
    if (d < head_dim) {
      const int rest = head_dim - d;
      acc = S::fma(S::load_first(query + d, rest), S::load_first(key + d, rest), acc);
    }
    scores[j] = S::reduce_add(acc) * scale;
  }
}

// attend_block for a block of a single query row (one token of a model whose KV heads each serve one query head,
// such as Llama-2-7B's decode): a tile of kRows rows would compute kRows - 1 rows of zeros. Scratch as the tiled
// path's: the query, then its scores.
template <class S>
void attend_row(const AttentionBlock& b, float* query, float* scores) {
  const int hd = b.head_dim, n_keys = b.n_keys[0];
  for (int d = 0; d < hd; d += S::kLanes) {
    const int lanes = static_cast<int>(min_of(S::kLanes, hd - d));
    typename S::V x = S::load_first(b.q + d, lanes);
    if (b.f16_rounding) x = S::round_to_f16(x);
    S::store_first(query + d, x, lanes);
  }
  score_row<S>(query, hd, b.keys, b.kv_stride, n_keys, b.scale, scores);
  softmax_row<S>(scores, n_keys, round_up(n_keys, S::kKeyVectors * S::kLanes), b.f16_rounding);
  float* const out_rows[1] = {b.out};
  weighted_values<S, 1>(scores, 0, n_keys, b.values, b.kv_stride, hd, out_rows);
}

// Query rows are taken kRows at a time (row r is token r / n_heads, head r % n_heads): their scores against every
// key they may see, the softmax of each row, then their outputs. Scratch, per attend_block_scratch_floats:
//   panels  [key_pad * head_dim]   keys transposed (transpose_keys)
//   queries [kMaxTileRows][head_dim] the tile's query rows, rounded to f16 if asked
//   scores  [kMaxTileRows][key_pad]  scores, then softmax weights
//   discard [head_dim]               outputs of the rows past the last
template <class S>
void attend_block_simd(const AttentionBlock& b, float* scratch) {
  static_assert(S::kRows <= kMaxTileRows && kMaxKeyTile % (S::kKeyVectors * S::kLanes) == 0);
  using V = typename S::V;
  constexpr int kRows = S::kRows, kKeyTile = S::kKeyVectors * S::kLanes;
  const int hd = b.head_dim;
  int max_keys = 0;
  for (int t = 0; t < b.n_tokens; ++t) max_keys = b.n_keys[t] > max_keys ? b.n_keys[t] : max_keys;
  const int64_t key_pad = round_up(max_keys, kMaxKeyTile);

  constexpr uintptr_t kAlignBytes = kScratchAlignment * sizeof(float);
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(scratch) + kAlignBytes - 1) & ~(kAlignBytes - 1);
  float* panels = reinterpret_cast<float*>(aligned);
  float* queries = panels + key_pad * hd;
  float* scores = queries + kMaxTileRows * round_up(hd, kScratchAlignment);
  float* discard = scores + kMaxTileRows * key_pad;
  if (b.n_tokens * b.n_heads == 1) {
    attend_row<S>(b, queries, scores);
    return;
  }
  transpose_keys<S>(b.keys, b.kv_stride, max_keys, hd, panels);

  const int n_rows = b.n_tokens * b.n_heads;
  const auto row_offset = [&](int r) {
    return (r / b.n_heads) * b.token_stride + static_cast<int64_t>(r % b.n_heads) * hd;
  };
  for (int r0 = 0; r0 < n_rows; r0 += kRows) {
    const int rows = static_cast<int>(min_of(kRows, n_rows - r0));
    int row_keys[kRows];
    float* out_rows[kRows];
    int tile_keys = 0;
    for (int i = 0; i < kRows; ++i) {
      float* query = queries + i * hd;
      if (i >= rows) {  // past the last row: zeros, whose results are discarded
        row_keys[i] = 0;
        out_rows[i] = discard;
        for (int d = 0; d < hd; ++d) query[d] = 0;
        continue;
      }
      const int64_t offset = row_offset(r0 + i);
      out_rows[i] = b.out + offset;
      row_keys[i] = b.n_keys[(r0 + i) / b.n_heads];
      tile_keys = row_keys[i] > tile_keys ? row_keys[i] : tile_keys;
      for (int d = 0; d < hd; d += S::kLanes) {
        const int lanes = static_cast<int>(min_of(S::kLanes, hd - d));
        V x = S::load_first(b.q + offset + d, lanes);
        if (b.f16_rounding) x = S::round_to_f16(x);
        S::store_first(query + d, x, lanes);
      }
    }
    // The next tile's queries are likely out of cache (the projections wrote them long ago): ask for them now,
    // while this tile computes.
    for (int i = 0; i < kRows && r0 + kRows + i < n_rows; ++i) {
      const float* next = b.q + row_offset(r0 + kRows + i);
      for (int d = 0; d < hd; d += 16) __builtin_prefetch(next + d);
    }
    const int64_t tile_padded = round_up(tile_keys, kKeyTile);
    score_tile<S>(queries, hd, panels, tile_padded, b.scale, scores, key_pad);
    for (int i = 0; i < kRows; ++i) {
      float* row = scores + i * key_pad;
      if (i < rows) {
        softmax_row<S>(row, row_keys[i], tile_padded, b.f16_rounding);
      } else {
        for (int64_t j = 0; j < tile_padded; ++j) row[j] = 0;
      }
    }
    weighted_values<S, kRows>(scores, key_pad, tile_keys, b.values, b.kv_stride, hd, out_rows);
  }
}

// attend_block_scored: the softmax and weighted values of attend_block_simd, tile by tile, over scores the caller
// made. Rows past the last of the tile are the buffer's padding rows (scored_attention_rows), zeroed.
template <class S>
void attend_block_scored_simd(const AttentionBlock& b, float* scores, int64_t stride) {
  constexpr int kRows = S::kRows, kKeyTile = S::kKeyVectors * S::kLanes;
  const int n_rows = b.n_tokens * b.n_heads;
  float discard[kMaxHeadDim];  // outputs of the rows past the last
  for (int r0 = 0; r0 < n_rows; r0 += kRows) {
    const int rows = static_cast<int>(min_of(kRows, n_rows - r0));
    int row_keys[kRows];
    float* out_rows[kRows];
    int tile_keys = 0;
    for (int i = 0; i < rows; ++i) {
      const int r = r0 + i;
      row_keys[i] = b.n_keys[r / b.n_heads];
      out_rows[i] = b.out + (r / b.n_heads) * b.token_stride + static_cast<int64_t>(r % b.n_heads) * b.head_dim;
      tile_keys = row_keys[i] > tile_keys ? row_keys[i] : tile_keys;
    }
    const int64_t tile_padded = round_up(tile_keys, kKeyTile);
    const typename S::V scale = S::broadcast(b.scale);
    for (int i = 0; i < kRows; ++i) {
      float* row = scores + (r0 + i) * stride;
      if (i < rows) {
        for (int64_t j = 0; j < tile_padded; j += S::kLanes) S::store(row + j, S::mul(S::load(row + j), scale));
        softmax_row<S>(row, row_keys[i], tile_padded, b.f16_rounding);
      } else {
        for (int64_t j = 0; j < tile_padded; ++j) row[j] = 0;
      }
    }
    for (int i = rows; i < kRows; ++i) out_rows[i] = discard;
    weighted_values<S, kRows>(scores + r0 * stride, stride, tile_keys, b.values, b.kv_stride, b.head_dim, out_rows);
  }
}

}  // namespace
}  // namespace tessera::cpu::detail
