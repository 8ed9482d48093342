// The interleaved layouts keep every byte of the GGUF blocks, and the interleaved kernels equal the reference
// (dequantized weights times the quantized activations, in double) up to float summation order.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "quant/interleaved.h"
#include "quant/quant.h"

namespace tessera::quant {
namespace {

const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

TEST(Interleaved, RoundTripKeepsEveryByte) {
  std::mt19937 rng(7);
  for (GgmlType type : kTypes) {
    for (int64_t n_cols : {256, 768}) {
      const int64_t n_rows = 48;  // 768 columns: 24 blocks of the 32-column formats
      const size_t row_bytes = ggml_row_bytes(type, n_cols);
      // Random bytes: every bit of every field, including scale bits the quantizer rarely sets.
      std::vector<uint8_t> rows(row_bytes * n_rows);
      for (uint8_t& b : rows) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> packed(interleaved_bytes(type, n_rows, n_cols), 0xAB);
      // In two calls, as loading threads would.
      interleave_rows(type, rows.data(), row_bytes, n_cols, 0, 16, packed.data());
      interleave_rows(type, rows.data(), row_bytes, n_cols, 16, n_rows, packed.data());
      std::vector<uint8_t> back(row_bytes);
      for (int64_t r = 0; r < n_rows; ++r) {
        deinterleave_row(type, packed.data(), n_cols, r, back.data());
        ASSERT_EQ(std::memcmp(back.data(), &rows[r * row_bytes], row_bytes), 0)
            << ggml_type_name(type) << " row " << r << " of " << n_cols << " columns";
      }
    }
  }
}

TEST(Interleaved, RejectsShapesWithoutWholeTiles) {
  EXPECT_FALSE(interleaved_available(GgmlType::Q4_K, 40, 256));
  EXPECT_FALSE(interleaved_available(GgmlType::Q4_K, 32, 200));
  EXPECT_FALSE(interleaved_available(GgmlType::Q4_1, 32, 256));
  EXPECT_FALSE(interleaved_available(GgmlType::Q8_0, 32, 48));
  EXPECT_THROW(interleaved_bytes(GgmlType::Q6_K, 20, 256), std::invalid_argument);
  EXPECT_THROW(interleaved_bytes(GgmlType::Q3_K, 32, 256), std::invalid_argument);
}

void check_gemm(GgmlType type, int64_t n_rows, int64_t n_cols, int64_t n_tokens, WeightPrefetch prefetch) {
  std::mt19937 rng(static_cast<uint32_t>(n_cols * 31 + n_tokens));
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  const size_t row_bytes = ggml_row_bytes(type, n_cols);
  std::vector<float> w(n_cols);
  std::vector<uint8_t> rows(row_bytes * n_rows);
  for (int64_t r = 0; r < n_rows; ++r) {
    for (float& v : w) v = gauss(rng);
    quantize_row_ref(type, w.data(), &rows[r * row_bytes], n_cols);
  }
  std::vector<uint8_t> packed(interleaved_bytes(type, n_rows, n_cols));
  interleave_rows(type, rows.data(), row_bytes, n_cols, 0, n_rows, packed.data());

  const size_t xq_bytes = activation_row_bytes(type, n_cols);
  std::vector<float> x(n_cols * n_tokens), x_seen(n_cols * n_tokens);
  std::vector<uint8_t> xq(xq_bytes * n_tokens);
  for (float& v : x) v = gauss(rng) * 3.0f;
  for (int64_t t = 0; t < n_tokens; ++t) {
    quantize_activations(type, &x[t * n_cols], &xq[t * xq_bytes], n_cols);
    dequantize_row_ref(activation_type(type), &xq[t * xq_bytes], &x_seen[t * n_cols], n_cols);
  }
  const int64_t ldy = n_rows + 5;
  std::vector<float> expected(ldy * n_tokens, 0.0f), magnitude(ldy * n_tokens, 0.0f);
  gemm_ref(type, rows.data(), row_bytes, n_cols, 0, n_rows, x_seen.data(), n_tokens, expected.data(), ldy);
  for (int64_t r = 0; r < n_rows; ++r) {
    dequantize_row_ref(type, &rows[r * row_bytes], w.data(), n_cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t c = 0; c < n_cols; ++c) magnitude[t * ldy + r] += std::fabs(w[c] * x_seen[t * n_cols + c]);
    }
  }

  std::vector<float> y(ldy * n_tokens, -12345.0f);
  gemm_interleaved(type, packed.data(), n_cols, 0, 16, xq.data(), xq_bytes, n_tokens, y.data(), ldy, prefetch);
  gemm_interleaved(type, packed.data(), n_cols, 16, n_rows, xq.data(), xq_bytes, n_tokens, y.data(), ldy, prefetch);
  int failures = 0;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < ldy; ++r) {
      const size_t i = t * ldy + r;
      if (r >= n_rows) {
        ASSERT_EQ(y[i], -12345.0f) << "wrote outside its rows";
        continue;
      }
      const double tol = 2e-6 * magnitude[i] + 1e-6;
      if (std::fabs(y[i] - expected[i]) > tol && ++failures <= 5) {
        ADD_FAILURE() << ggml_type_name(type) << " " << n_rows << "x" << n_cols << " prefetch "
                      << weight_prefetch_name(prefetch) << " row " << r << " token " << t
                      << ": " << y[i] << " vs reference " << expected[i] << " (tolerance " << tol << ")";
      }
    }
  }
}

TEST(Interleaved, GemmMatchesReference) {
  if (!interleaved_available(GgmlType::Q4_K, 16, 256)) GTEST_SKIP() << "this CPU has no AVX-512 VNNI";
  for (GgmlType type : kTypes) {
    for (int64_t n_cols : {256, 768, 800}) {
      if (n_cols % ggml_type_traits(type).block_size != 0) continue;
      for (int64_t n_tokens : {1, 2, 5, 8, 13, 17}) {
        check_gemm(type, 48, n_cols, n_tokens, active_weight_prefetch());
        if (HasFailure()) return;
      }
    }
  }
}

// Each prefetch is its own instantiation of the kernels. The matrix spans several row groups of many tiles, so
// the requests run ahead across tile and group boundaries, and past the matrix's end.
TEST(Interleaved, EveryWeightPrefetchMatchesReference) {
  if (!interleaved_available(GgmlType::Q4_K, 16, 256)) GTEST_SKIP() << "this CPU has no AVX-512 VNNI";
  for (WeightPrefetch prefetch : {WeightPrefetch::None, WeightPrefetch::NonTemporal, WeightPrefetch::L1}) {
    for (GgmlType type : kTypes) {
      for (int64_t n_tokens : {1, 3, 8, 9}) {
        check_gemm(type, 64, 2048, n_tokens, prefetch);
        if (HasFailure()) return;
      }
    }
  }
}

// A token's results are bit for bit the same whichever pass of the kernels it is in (one token alone, a pass of 8,
// or the short pass after 8): the engine relies on this for a batch of sequences to give each the logits it gets
// alone.
TEST(Interleaved, TokenResultsDoNotDependOnTheOtherTokens) {
  if (!interleaved_available(GgmlType::Q4_K, 16, 256)) GTEST_SKIP() << "this CPU has no AVX-512 VNNI";
  constexpr int64_t kRows = 32, kCols = 512, kTokens = 19;
  std::mt19937 rng(11);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (GgmlType type : kTypes) {
    const size_t row_bytes = ggml_row_bytes(type, kCols);
    std::vector<float> w(kCols);
    std::vector<uint8_t> rows(row_bytes * kRows);
    for (int64_t r = 0; r < kRows; ++r) {
      for (float& v : w) v = gauss(rng);
      quantize_row_ref(type, w.data(), &rows[r * row_bytes], kCols);
    }
    std::vector<uint8_t> packed(interleaved_bytes(type, kRows, kCols));
    interleave_rows(type, rows.data(), row_bytes, kCols, 0, kRows, packed.data());
    const size_t xq_bytes = activation_row_bytes(type, kCols);
    std::vector<uint8_t> xq(xq_bytes * kTokens);
    for (int64_t t = 0; t < kTokens; ++t) {
      for (float& v : w) v = gauss(rng) * 3.0f;
      quantize_activations(type, w.data(), &xq[t * xq_bytes], kCols);
    }
    std::vector<float> together(kRows * kTokens);
    gemm_interleaved(type, packed.data(), kCols, 0, kRows, xq.data(), xq_bytes, kTokens, together.data(), kRows);
    for (int64_t n : {2, 5}) {  // the first n tokens in one short pass
      std::vector<float> few(kRows * n);
      gemm_interleaved(type, packed.data(), kCols, 0, kRows, xq.data(), xq_bytes, n, few.data(), kRows);
      for (int64_t i = 0; i < kRows * n; ++i) {
        ASSERT_EQ(few[i], together[i]) << ggml_type_name(type) << ", " << n << " tokens: row " << i % kRows
                                       << " token " << i / kRows;
      }
    }
    for (int64_t t = 0; t < kTokens; ++t) {
      std::vector<float> alone(kRows);
      gemm_interleaved(type, packed.data(), kCols, 0, kRows, &xq[t * xq_bytes], xq_bytes, 1, alone.data(), kRows);
      for (int64_t r = 0; r < kRows; ++r) {
        ASSERT_EQ(alone[r], together[t * kRows + r]) << ggml_type_name(type) << " row " << r << " token " << t;
      }
    }
  }
}

TEST(Interleaved, WeightPrefetchFollowsTheProcessorUnlessOverridden) {
  const char* env = std::getenv("TESSERA_PREFETCH");
  if (env && *env) {
    EXPECT_EQ(weight_prefetch_name(active_weight_prefetch()), env);
  } else {
    EXPECT_EQ(active_weight_prefetch(), weight_prefetch_for_cpu());
  }
  EXPECT_EQ(weight_prefetch_for("AuthenticAMD", 0x19), WeightPrefetch::None);         // Zen 4
  EXPECT_EQ(weight_prefetch_for("AuthenticAMD", 0x1A), WeightPrefetch::NonTemporal);  // Zen 5
  EXPECT_EQ(weight_prefetch_for("GenuineIntel", 6), WeightPrefetch::L1);
  EXPECT_EQ(weight_prefetch_for("", 0), WeightPrefetch::L1);
  EXPECT_EQ(weight_prefetch_name(WeightPrefetch::None), "none");
  EXPECT_EQ(weight_prefetch_name(WeightPrefetch::NonTemporal), "nta");
  EXPECT_EQ(weight_prefetch_name(WeightPrefetch::L1), "l1");
}

}  // namespace
}  // namespace tessera::quant
