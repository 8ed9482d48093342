// Every gemm kernel at every SIMD level this CPU supports equals the reference (dequantized weights times the
// dequantized quantized activations, in double) up to float summation order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "quant/kernels.h"
#include "quant/quant.h"

namespace tessera::quant {
namespace {

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels{SimdLevel::Scalar};
  const SimdLevel cpu = detail::cpu_simd_level();
  if (cpu != SimdLevel::Scalar) levels.push_back(SimdLevel::Avx2);
  if (cpu == SimdLevel::Avx512Vnni) levels.push_back(SimdLevel::Avx512Vnni);
  return levels;
}

const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                                 GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                                 GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

struct Problem {
  GgmlType type;
  int64_t n_cols;
  int64_t n_rows;
  int64_t n_tokens;
};

void check_gemm(const Problem& p) {
  std::mt19937 rng(static_cast<uint32_t>(p.n_cols * 131 + p.n_rows * 7 + p.n_tokens));
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> w(p.n_cols * p.n_rows), x(p.n_cols * p.n_tokens);
  for (float& v : w) v = gauss(rng);
  for (float& v : x) v = gauss(rng) * 3.0f;
  const size_t row_bytes = ggml_row_bytes(p.type, p.n_cols);
  std::vector<uint8_t> wq(row_bytes * p.n_rows);
  for (int64_t r = 0; r < p.n_rows; ++r) quantize_row_ref(p.type, &w[r * p.n_cols], &wq[r * row_bytes], p.n_cols);

  const size_t xq_bytes = activation_row_bytes(p.type, p.n_cols);
  const GgmlType act = activation_type(p.type);
  // Reference: the weights as dequantized, times the activations as the kernels see them.
  std::vector<uint8_t> xq(xq_bytes * p.n_tokens);
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    detail::quantize_activations_at(SimdLevel::Scalar, p.type, &x[t * p.n_cols], &xq[t * xq_bytes], p.n_cols);
  }
  std::vector<float> x_seen(x.size());
  for (int64_t t = 0; t < p.n_tokens; ++t) dequantize_row_ref(act, &xq[t * xq_bytes], &x_seen[t * p.n_cols], p.n_cols);
  const int64_t ldy = p.n_rows + 3;
  std::vector<float> expected(ldy * p.n_tokens, 0.0f);
  gemm_ref(p.type, wq.data(), row_bytes, p.n_cols, 0, p.n_rows, x_seen.data(), p.n_tokens, expected.data(), ldy);
  // Summation-order tolerance: relative to the sum of |w x| of each output.
  std::vector<float> w_seen(p.n_cols);
  std::vector<double> magnitude(ldy * p.n_tokens, 0.0);
  for (int64_t r = 0; r < p.n_rows; ++r) {
    dequantize_row_ref(p.type, &wq[r * row_bytes], w_seen.data(), p.n_cols);
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      for (int64_t c = 0; c < p.n_cols; ++c) magnitude[t * ldy + r] += std::fabs(w_seen[c] * x_seen[t * p.n_cols + c]);
      if (act == GgmlType::Q8_1) {
        // Q8_1 stores d * sum(q) rounded to f16 for the weights' min term: allow |min| * |s| * 2^-10 per block (d is rounded too),
        // with |min| bounded by the block's largest |w|.
        for (int64_t b = 0; b < p.n_cols; b += 32) {
          float w_max = 0, x_sum = 0;
          for (int64_t c = b; c < b + 32; ++c) {
            w_max = std::max(w_max, std::fabs(w_seen[c]));
            x_sum += x_seen[t * p.n_cols + c];
          }
          magnitude[t * ldy + r] += w_max * std::fabs(x_sum) * (1.0 / 1024) / 2e-6;
        }
      }
    }
  }

  for (SimdLevel level : supported_levels()) {
    // Activation quantizers of every level give the same bytes.
    std::vector<uint8_t> xq_level(xq.size());
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      detail::quantize_activations_at(level, p.type, &x[t * p.n_cols], &xq_level[t * xq_bytes], p.n_cols);
    }
    ASSERT_EQ(xq_level, xq) << ggml_type_name(p.type) << " activations at " << simd_level_name(level);

    std::vector<float> y(ldy * p.n_tokens, -12345.0f);
    // Two calls over split row ranges, as threads would make them.
    const int64_t split = p.n_rows / 3;
    detail::gemm_at(level, p.type, wq.data(), row_bytes, p.n_cols, 0, split, xq.data(), xq_bytes, p.n_tokens, y.data(), ldy);
    detail::gemm_at(level, p.type, wq.data(), row_bytes, p.n_cols, split, p.n_rows, xq.data(), xq_bytes, p.n_tokens,
                    y.data(), ldy);
    int failures = 0;
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      for (int64_t r = 0; r < ldy; ++r) {
        const size_t i = t * ldy + r;
        if (r >= p.n_rows) {
          ASSERT_EQ(y[i], -12345.0f) << "wrote outside its rows";
          continue;
        }
        const double tol = 2e-6 * magnitude[i] + 1e-6;
        if (std::fabs(y[i] - expected[i]) > tol && ++failures <= 5) {
          ADD_FAILURE() << ggml_type_name(p.type) << " at " << simd_level_name(level) << " cols " << p.n_cols
                        << " row " << r << " token " << t << ": " << y[i] << " vs reference " << expected[i]
                        << " (tolerance " << tol << ")";
        }
      }
    }
  }
}

TEST(Gemm, EveryTypeEveryLevelMatchesReference) {
  for (GgmlType type : kWeightTypes) {
    const int64_t block = ggml_type_traits(type).block_size == 1 ? 1 : ggml_type_traits(type).block_size;
    // Row lengths: one block, odd block counts, and (for plain types) lengths that are no multiple of a vector.
    std::vector<int64_t> lengths = {256, 768 + 256 * (block == 32 ? 0 : 1)};
    if (block == 32) lengths = {32, 96, 416};
    if (block == 1) lengths = {7, 100, 259};
    for (int64_t n_cols : lengths) {
      for (int64_t n_tokens : {1, 3, 7, 17}) {
        check_gemm({type, n_cols, 13, n_tokens});
        if (HasFailure()) return;
      }
    }
  }
}

TEST(Gemm, EveryTypeHasKernelsAtEveryLevel) {
  // The dispatcher falls back to a lower level when one lacks a type; for Tessera's types none should need to.
  for (GgmlType type : kWeightTypes) {
    EXPECT_NE(detail::gemm_kernel_scalar(type), nullptr) << ggml_type_name(type);
    EXPECT_NE(detail::gemm_kernel_avx2(type), nullptr) << ggml_type_name(type);
    EXPECT_NE(detail::gemm_kernel_avx512(type), nullptr) << ggml_type_name(type);
  }
  for (GgmlType act : {GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K}) {
    EXPECT_NE(detail::activation_quantizer_avx2(act), nullptr) << ggml_type_name(act);
    EXPECT_NE(detail::activation_quantizer_avx512(act), nullptr) << ggml_type_name(act);
  }
}

TEST(Gemm, LevelNamesAndActiveLevel) {
  EXPECT_EQ(simd_level_name(SimdLevel::Scalar), "scalar");
  EXPECT_EQ(simd_level_name(SimdLevel::Avx2), "avx2");
  EXPECT_EQ(simd_level_name(SimdLevel::Avx512Vnni), "avx512");
  EXPECT_LE(static_cast<int>(active_simd_level()), static_cast<int>(detail::cpu_simd_level()));
}

TEST(Activations, FormatsFollowLlamaCpp) {
  EXPECT_EQ(activation_type(GgmlType::Q4_0), GgmlType::Q8_0);
  EXPECT_EQ(activation_type(GgmlType::Q5_0), GgmlType::Q8_0);
  EXPECT_EQ(activation_type(GgmlType::Q8_0), GgmlType::Q8_0);
  EXPECT_EQ(activation_type(GgmlType::Q4_1), GgmlType::Q8_1);
  EXPECT_EQ(activation_type(GgmlType::Q5_1), GgmlType::Q8_1);
  EXPECT_EQ(activation_type(GgmlType::Q4_K), GgmlType::Q8_K);
  EXPECT_EQ(activation_type(GgmlType::Q6_K), GgmlType::Q8_K);
  EXPECT_EQ(activation_type(GgmlType::F32), GgmlType::F32);
  EXPECT_EQ(activation_row_bytes(GgmlType::Q4_K, 512), 2u * 292);
  EXPECT_EQ(activation_row_bytes(GgmlType::Q4_1, 64), 2u * 36);
  EXPECT_EQ(activation_row_bytes(GgmlType::F32, 10), 40u);
}

TEST(Activations, Q8_0RoundsHalfToEvenWith127OverAmax) {
  // amax 127 makes the inverse scale exactly 1, so the values below are exact ties.
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -3.5f;
  x[3] = 0.5f;
  std::vector<uint8_t> xq(34);
  for (SimdLevel level : supported_levels()) {
    detail::quantize_activations_at(level, GgmlType::Q8_0, x.data(), xq.data(), 32);
    EXPECT_EQ(static_cast<int8_t>(xq[2 + 0]), 127);
    EXPECT_EQ(static_cast<int8_t>(xq[2 + 1]), 2);
    EXPECT_EQ(static_cast<int8_t>(xq[2 + 2]), -4);
    EXPECT_EQ(static_cast<int8_t>(xq[2 + 3]), 0);
  }
}

}  // namespace
}  // namespace tessera::quant
