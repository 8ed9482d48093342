#include "backend/cpu/attention.h"

#include <stdexcept>

#include "backend/cpu/attention_kernels.h"
#include "backend/cpu/ops.h"

namespace tessera::cpu {
namespace {

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// The scalar level is the reference itself, one query row at a time.
void attend_block_scalar(const AttentionBlock& b, float* scratch) {
  for (int t = 0; t < b.n_tokens; ++t) {
    for (int g = 0; g < b.n_heads; ++g) {
      const int64_t offset = t * b.token_stride + static_cast<int64_t>(g) * b.head_dim;
      attend(b.q + offset, b.keys, b.values, b.kv_stride, b.n_keys[t], b.head_dim, b.scale, b.f16_rounding, scratch,
             b.out + offset);
    }
  }
}

void attend_block_scored_scalar(const AttentionBlock& b, float* scores, int64_t score_stride) {
  for (int t = 0; t < b.n_tokens; ++t) {
    for (int g = 0; g < b.n_heads; ++g) {
      const int64_t row = static_cast<int64_t>(t) * b.n_heads + g;
      const int64_t offset = t * b.token_stride + static_cast<int64_t>(g) * b.head_dim;
      attend_scored(scores + row * score_stride, b.values, b.kv_stride, b.n_keys[t], b.head_dim, b.scale,
                    b.f16_rounding, b.out + offset);
    }
  }
}

}  // namespace

int64_t scored_attention_rows(int n_rows) { return round_up(n_rows, detail::kMaxTileRows); }
int64_t scored_attention_stride(int max_keys) { return round_up(max_keys, detail::kMaxKeyTile); }

void attend_block_scored(const AttentionBlock& block, float* scores, int64_t score_stride) {
  attend_block_scored_at(quant::active_simd_level(), block, scores, score_stride);
}

void attend_block_scored_at(quant::SimdLevel level, const AttentionBlock& block, float* scores,
                            int64_t score_stride) {
  switch (level) {
    case quant::SimdLevel::Avx512Vnni:
      detail::attend_block_scored_avx512(block, scores, score_stride);
      return;
    case quant::SimdLevel::Avx2:
      detail::attend_block_scored_avx2(block, scores, score_stride);
      return;
    case quant::SimdLevel::Scalar:
      attend_block_scored_scalar(block, scores, score_stride);
      return;
  }
}

size_t attend_block_scratch_floats(int max_keys, int head_dim) {
  using namespace detail;
  // Transposed keys [key_pad][head_dim], one tile of queries, one tile of scores, one discarded output row; see
  // attend_block_simd in attention_simd.h.
  const int64_t key_pad = round_up(max_keys, kMaxKeyTile);
  const int64_t dim_pad = round_up(head_dim, kScratchAlignment);
  return static_cast<size_t>(key_pad * head_dim + kMaxTileRows * dim_pad + kMaxTileRows * key_pad + dim_pad +
                             kScratchAlignment);
}

void attend_block(const AttentionBlock& block, float* scratch) {
  attend_block_at(quant::active_simd_level(), block, scratch);
}

void attend_block_at(quant::SimdLevel level, const AttentionBlock& block, float* scratch) {
  switch (level) {
    case quant::SimdLevel::Avx512Vnni:
      detail::attend_block_avx512(block, scratch);
      return;
    case quant::SimdLevel::Avx2:
      detail::attend_block_avx2(block, scratch);
      return;
    case quant::SimdLevel::Scalar:
      attend_block_scalar(block, scratch);
      return;
  }
}

void softmax_exp_at(quant::SimdLevel level, const float* x, float* y, int64_t n) {
  switch (level) {
    case quant::SimdLevel::Avx512Vnni:
      detail::softmax_exp_avx512(x, y, n);
      return;
    case quant::SimdLevel::Avx2:
      detail::softmax_exp_avx2(x, y, n);
      return;
    case quant::SimdLevel::Scalar:
      break;
  }
  throw std::invalid_argument("softmax_exp_at: the scalar level uses std::exp");
}

void swiglu_at(quant::SimdLevel level, const float* gate, const float* up, float* out, int64_t n) {
  switch (level) {
    case quant::SimdLevel::Avx512Vnni:
      detail::swiglu_avx512(gate, up, out, n);
      return;
    case quant::SimdLevel::Avx2:
      detail::swiglu_avx2(gate, up, out, n);
      return;
    case quant::SimdLevel::Scalar:
      swiglu(gate, up, out, static_cast<int>(n));
      return;
  }
}

}  // namespace tessera::cpu
