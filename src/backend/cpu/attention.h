// Grouped-query attention for prompt processing: every query head that shares one KV head, over a run of query
// tokens of one sequence, at once. The scores are a small matrix product (queries x keys), the softmax uses a
// vectorized exp, and the weighted sum of values is a second product, so each key and value is loaded once per
// tile of query rows instead of once per query. The numerics are attend()'s (ops.h) up to float reassociation
// and the exp's last bit or two: attend() is the reference this op is tested against.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace tessera::cpu {

struct AttentionBlock {
  const float* q;          // query row (t, g) is q + t * token_stride + g * head_dim, for t < n_tokens, g < n_heads
  float* out;              // its output row is at the same offset from out
  int64_t token_stride;
  int n_tokens;
  int n_heads;             // query heads that share this KV head
  const int32_t* n_keys;   // [n_tokens]: token t attends to keys [0, n_keys[t]), n_keys[t] >= 1
  const float* keys;       // key j is keys + j * kv_stride, head_dim floats
  const float* values;     // value j likewise
  int64_t kv_stride;
  int head_dim;
  float scale;             // applied to q.k before the softmax
  bool f16_rounding;       // round q and the softmax weights to f16, as attend() does for an f16 KV cache
};

// Floats of scratch that attend_block needs when no token attends to more than max_keys keys.
size_t attend_block_scratch_floats(int max_keys, int head_dim);

// out = softmax(q.k * scale) V for every query row of the block, at the active SIMD level.
void attend_block(const AttentionBlock& block, float* scratch);

// The same at a chosen level, which must not exceed what the CPU supports (tests run every level). The scalar
// level is attend() row by row, so head_dim is at most 512 there.
void attend_block_at(quant::SimdLevel level, const AttentionBlock& block, float* scratch);

// attend_block for scores made elsewhere (the integer dot products of a quantized query with a quantized KV
// cache's keys): scores[r * score_stride + j] = q.k of query row r (token r / n_heads, head r % n_heads) and key j,
// unscaled; they are overwritten. block.q and block.keys are not read, and f16_rounding rounds only the softmax
// weights. The buffer needs scored_attention_rows(n_tokens * n_heads) rows of a stride of at least
// scored_attention_stride(the most keys a token sees).
int64_t scored_attention_rows(int n_rows);
int64_t scored_attention_stride(int max_keys);
void attend_block_scored(const AttentionBlock& block, float* scores, int64_t score_stride);
// The same at a chosen level (the scalar level is attend_scored of ops.h, row by row).
void attend_block_scored_at(quant::SimdLevel level, const AttentionBlock& block, float* scores, int64_t score_stride);

// y[i] = exp(x[i]) as the softmax of attend_block computes it at `level` (AVX2 or AVX-512), exposed for its
// test: within 2 ulp of exp for -87.3365 <= x <= 88, zero below (where exp(x) is about FLT_MIN or less).
void softmax_exp_at(quant::SimdLevel level, const float* x, float* y, int64_t n);

// out = silu(gate) * up with the exp above at `level` (the scalar level is swiglu() of ops.h, the reference).
// The forward pass calls it at the active level; it differs from the reference by the exp's last bits.
void swiglu_at(quant::SimdLevel level, const float* gate, const float* up, float* out, int64_t n);

}  // namespace tessera::cpu
