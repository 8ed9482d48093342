// attend_block at every SIMD level this CPU runs equals attend() row by row, up to float reassociation, and its
// vectorized exp is within 2 ulp of exp.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/ops.h"
#include "quant/quant.h"

namespace tessera::cpu {
namespace {

using quant::SimdLevel;

std::vector<SimdLevel> levels_up_to_active() {
  std::vector<SimdLevel> levels;
  for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni}) {
    if (static_cast<int>(level) <= static_cast<int>(quant::active_simd_level())) levels.push_back(level);
  }
  return levels;
}

std::vector<SimdLevel> vector_levels() {
  std::vector<SimdLevel> levels = levels_up_to_active();
  levels.erase(levels.begin());
  return levels;
}

// Distance in units in the last place, counting representable floats between a and b (same sign assumed).
int64_t ulp_distance(float a, float b) {
  const auto ordered = [](float x) {
    const int32_t bits = std::bit_cast<int32_t>(x);
    return bits < 0 ? -static_cast<int64_t>(bits & 0x7fffffff) : static_cast<int64_t>(bits);
  };
  return std::abs(ordered(a) - ordered(b));
}

TEST(SoftmaxExp, WithinTwoUlpOfExp) {
  std::vector<float> x;
  for (float v = -87.33f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  x.push_back(-87.3365f);  // just above the cut to zero
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> small(-1.0f, 1.0f);
  for (int i = 0; i < 10001; ++i) x.push_back(small(rng));  // odd count: the vector tail runs too
  x.push_back(0.0f);
  std::vector<float> y(x.size());
  for (SimdLevel level : vector_levels()) {
    softmax_exp_at(level, x.data(), y.data(), static_cast<int64_t>(x.size()));
    int64_t worst = 0;
    size_t worst_at = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = static_cast<float>(std::exp(static_cast<double>(x[i])));
      const int64_t d = ulp_distance(y[i], want);
      if (d > worst) worst = d, worst_at = i;
    }
    EXPECT_LE(worst, 2) << quant::simd_level_name(level) << ": exp(" << x[worst_at] << ") = " << y[worst_at]
                        << ", want " << std::exp(static_cast<double>(x[worst_at]));
    EXPECT_EQ(y.back(), 1.0f) << quant::simd_level_name(level);
  }
}

TEST(SoftmaxExp, EdgeCases) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf, -1000.0f, -87.5f, -88.0f, std::nanf("")};
  std::vector<float> y(x.size());
  for (SimdLevel level : vector_levels()) {
    softmax_exp_at(level, x.data(), y.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i + 1 < x.size(); ++i) EXPECT_EQ(y[i], 0.0f) << quant::simd_level_name(level) << " x " << x[i];
    EXPECT_TRUE(std::isnan(y.back())) << quant::simd_level_name(level);
  }
}

TEST(Swiglu, VectorLevelsMatchTheReference) {
  // Gates over the whole useful range and beyond (silu saturates at both ends), an odd count for the tail.
  std::vector<float> gate, up;
  std::mt19937 rng(11);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (float g = -120.0f; g <= 120.0f; g += 0.0173f) {
    gate.push_back(g);
    up.push_back(gauss(rng));
  }
  const int64_t n = static_cast<int64_t>(gate.size());
  std::vector<float> want(n), got(n);
  swiglu(gate.data(), up.data(), want.data(), static_cast<int>(n));
  for (SimdLevel level : levels_up_to_active()) {
    swiglu_at(level, gate.data(), up.data(), got.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      // The exp's 2 ulp, the division's and the multiplication's rounding: a few ulp of the result.
      const float tol = 4e-7f * std::fabs(want[i]) + 1e-30f;
      ASSERT_NEAR(got[i], want[i], tol) << quant::simd_level_name(level) << " gate " << gate[i] << " up " << up[i];
    }
  }
}

struct Shape {
  int head_dim;
  int n_heads;   // query heads per KV head
  int n_tokens;
  int first_keys;  // n_keys of token 0; token t sees first_keys + t keys, as a run of a prompt does
};

std::string describe(const Shape& s, bool f16, SimdLevel level) {
  return "head_dim " + std::to_string(s.head_dim) + " heads " + std::to_string(s.n_heads) + " tokens " +
         std::to_string(s.n_tokens) + " first_keys " + std::to_string(s.first_keys) + (f16 ? " f16" : " f32") + " at " +
         std::string(quant::simd_level_name(level));
}

void check_against_attend(const Shape& s, bool f16, std::vector<int32_t> n_keys) {
  const int hd = s.head_dim;
  const int max_keys = *std::max_element(n_keys.begin(), n_keys.end());
  // Strides wider than the rows, as in the model (keys of one KV head among others, queries of many heads).
  const int64_t kv_stride = hd + 5, token_stride = static_cast<int64_t>(s.n_heads) * hd + 3;
  std::mt19937 rng(static_cast<uint32_t>(hd * 1000 + s.n_heads * 100 + s.n_tokens * 10 + s.first_keys + f16));
  // Scores of a few units, as trained models have: the softmax is neither flat nor one-hot.
  std::normal_distribution<float> gauss(0.0f, 1.5f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> q(s.n_tokens * token_stride), keys(max_keys * kv_stride), values(max_keys * kv_stride);
  for (float& x : q) x = gauss(rng);
  for (float& x : keys) x = gauss(rng);
  for (float& x : values) x = uniform(rng);
  if (f16) {  // an f16 cache holds f16 values
    for (float& x : keys) x = round_to_f16(x);
    for (float& x : values) x = round_to_f16(x);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> want(q.size(), 0.0f), scores(max_keys);
  for (int t = 0; t < s.n_tokens; ++t) {
    for (int g = 0; g < s.n_heads; ++g) {
      const int64_t at = t * token_stride + static_cast<int64_t>(g) * hd;
      attend(q.data() + at, keys.data(), values.data(), kv_stride, n_keys[t], hd, scale, f16, scores.data(),
             want.data() + at);
    }
  }

  std::vector<float> scratch(attend_block_scratch_floats(max_keys, hd));
  for (SimdLevel level : levels_up_to_active()) {
    const float sentinel = 12345.0f;  // bytes between rows must stay untouched
    std::vector<float> got(q.size(), sentinel);
    const AttentionBlock block{q.data(),       got.data(), token_stride, s.n_tokens, s.n_heads, n_keys.data(),
                               keys.data(),    values.data(), kv_stride, hd,         scale,     f16};
    attend_block_at(level, block, scratch.data());

    int n_bad = 0;
    float max_err = 0;
    for (int t = 0; t < s.n_tokens; ++t) {
      // Tolerance, relative to the largest |value| (1 here). Without rounding, the scores differ by the
      // summation order of head_dim products (< head_dim * eps * scale * sum|q_d k_d|, a few 1e-6 here), which
      // moves each weight by as much relatively, and the exp by 2 ulp; the weighted sums differ by their order
      // (< n_keys * eps). With f16 rounding a weight that lands near a rounding boundary may round the other way:
      // one f16 step, 2^-10 of the weight (or 2^-24 for subnormal halves), 2^-10 + n_keys * 2^-24 in all.
      float max_qk = 0;
      for (int g = 0; g < s.n_heads; ++g) {
        for (int j = 0; j < n_keys[t]; ++j) {
          float sum = 0;
          for (int d = 0; d < hd; ++d) sum += std::abs(q[t * token_stride + g * hd + d] * keys[j * kv_stride + d]);
          max_qk = std::max(max_qk, sum);
        }
      }
      const float eps = std::numeric_limits<float>::epsilon();
      float tolerance = 2 * hd * eps * scale * max_qk + (n_keys[t] + 8) * eps;
      if (f16) tolerance += std::ldexp(1.0f, -10) + n_keys[t] * std::ldexp(1.0f, -24);
      for (int64_t i = t * token_stride; i < (t + 1) * token_stride; ++i) {
        const bool in_row = i - t * token_stride < static_cast<int64_t>(s.n_heads) * hd;
        if (!in_row) {
          if (got[i] != sentinel && n_bad++ < 5) {
            ADD_FAILURE() << describe(s, f16, level) << ": wrote padding at " << i;
          }
          continue;
        }
        const float err = std::abs(got[i] - want[i]);
        max_err = std::max(max_err, err);
        if (!(err <= tolerance) && n_bad++ < 5) {
          ADD_FAILURE() << describe(s, f16, level) << ": token " << t << " element " << i - t * token_stride
                        << " got " << got[i] << " want " << want[i] << " (tolerance " << tolerance << ")";
        }
      }
    }
    if (level == SimdLevel::Scalar) {
      EXPECT_EQ(max_err, 0.0f) << describe(s, f16, level);
    }
    EXPECT_EQ(n_bad, 0) << describe(s, f16, level) << ": max error " << max_err;
  }
}

TEST(AttendBlock, MatchesAttendRowByRow) {
  const Shape shapes[] = {
      {64, 8, 32, 481},  // TinyLlama's last prompt block
      {64, 8, 1, 203},   // TinyLlama's decode
      {64, 8, 7, 1},     // the first tokens of a prompt
      {80, 3, 5, 33},    {128, 1, 9, 100}, {8, 4, 3, 2}, {20, 2, 11, 64}, {72, 5, 4, 17}, {128, 8, 2, 250},
      // One query row (decode where each KV head serves one query head): the path without key panels.
      {128, 1, 1, 77},   {64, 1, 1, 1},     {20, 1, 1, 300}, {200, 1, 1, 33},
  };
  for (const Shape& s : shapes) {
    for (bool f16 : {true, false}) {
      std::vector<int32_t> n_keys(s.n_tokens);
      for (int t = 0; t < s.n_tokens; ++t) n_keys[t] = s.first_keys + t;
      check_against_attend(s, f16, n_keys);
    }
  }
}

// The op takes any key counts per token, not only a run of consecutive positions.
TEST(AttendBlock, UnorderedKeyCounts) {
  for (bool f16 : {true, false}) {
    check_against_attend({64, 4, 6, 0}, f16, {40, 1, 97, 3, 64, 65});
    check_against_attend({33, 3, 3, 0}, f16, {7, 130, 31});
  }
}

// attend_block_scored at every level equals attend_scored row by row (the scalar level exactly), for rows whose
// scores come from elsewhere (quantized keys), with and without the f16 rounding of the weights.
TEST(AttendBlockScored, MatchesAttendScoredRowByRow) {
  const Shape shapes[] = {{64, 8, 32, 481}, {64, 8, 7, 1}, {128, 1, 1, 77}, {32, 3, 5, 33}, {96, 4, 3, 250}};
  for (const Shape& s : shapes) {
    for (bool f16 : {true, false}) {
      const int hd = s.head_dim, n_rows = s.n_tokens * s.n_heads, max_keys = s.first_keys + s.n_tokens - 1;
      std::vector<int32_t> n_keys(s.n_tokens);
      for (int t = 0; t < s.n_tokens; ++t) n_keys[t] = s.first_keys + t;
      const int64_t kv_stride = hd + 3, token_stride = static_cast<int64_t>(s.n_heads) * hd + 5;
      std::mt19937 rng(static_cast<uint32_t>(hd + 7 * s.n_tokens + f16));
      std::normal_distribution<float> gauss(0.0f, 12.0f);  // unscaled q.k: a few units once scaled
      std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
      std::vector<float> values(max_keys * kv_stride);
      for (float& x : values) x = uniform(rng);
      const int64_t stride = scored_attention_stride(max_keys) + 3;
      std::vector<float> scores(scored_attention_rows(n_rows) * stride);
      for (float& x : scores) x = gauss(rng);
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

      std::vector<float> want(s.n_tokens * token_stride, 0.0f);
      for (int r = 0; r < n_rows; ++r) {
        std::vector<float> row(scores.begin() + r * stride, scores.begin() + r * stride + n_keys[r / s.n_heads]);
        attend_scored(row.data(), values.data(), kv_stride, n_keys[r / s.n_heads], hd, scale, f16,
                      want.data() + (r / s.n_heads) * token_stride + (r % s.n_heads) * hd);
      }
      for (SimdLevel level : levels_up_to_active()) {
        std::vector<float> scratch = scores, got(want.size(), 0.0f);
        const AttentionBlock block{nullptr,       got.data(), token_stride, s.n_tokens, s.n_heads, n_keys.data(),
                                   nullptr,       values.data(), kv_stride, hd,         scale,     f16};
        attend_block_scored_at(level, block, scratch.data(), stride);
        float max_err = 0;
        for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::abs(got[i] - want[i]));
        // As in check_against_attend: the exp's ulps and the summation order; an f16 weight that rounds the other
        // way moves the output by one f16 step of that weight.
        float tolerance = (max_keys + 8) * std::numeric_limits<float>::epsilon() * 4;
        if (f16) tolerance += std::ldexp(1.0f, -10) + max_keys * std::ldexp(1.0f, -24);
        if (level == SimdLevel::Scalar) tolerance = 0;
        EXPECT_LE(max_err, tolerance) << describe(s, f16, level);
      }
    }
  }
}

}  // namespace
}  // namespace tessera::cpu
