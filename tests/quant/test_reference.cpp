// The reference formats: half conversions, known block values, error bounds of quantize -> dequantize, and the
// errors for unsupported types.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "quant/quant.h"

namespace tessera::quant {
namespace {

TEST(Half, KnownConversions) {
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);          // the halfway point to 65536 rounds to infinity
  EXPECT_EQ(fp32_to_fp16(5.9604645e-8f), 0x0001);     // smallest subnormal
  EXPECT_EQ(fp32_to_fp16(2.9802322e-8f), 0x0000);     // half of it: ties to even gives zero
  EXPECT_EQ(fp32_to_fp16(1.0f + 1.0f / 2048), 0x3c00);  // tie between 0x3c00 and 0x3c01: even wins
  EXPECT_EQ(fp32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);  // tie between 0x3c01 and 0x3c02: even wins
  EXPECT_FLOAT_EQ(fp16_to_fp32(0x3555), 0.33325195f);
  EXPECT_FLOAT_EQ(fp16_to_fp32(0x0001), 5.9604645e-8f);
  EXPECT_TRUE(std::isinf(fp16_to_fp32(0xfc00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(1.00390625f), 0x3f80);  // tie to even
  EXPECT_EQ(fp32_to_bf16(1.01171875f), 0x3f82);  // tie to even (up)
  EXPECT_EQ(fp32_to_bf16(std::nanf("")) & 0x7fc0, 0x7fc0);
  EXPECT_FLOAT_EQ(bf16_to_fp32(0xc040), -3.0f);
}

TEST(Half, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), h) << std::hex << h;
  }
}

TEST(Reference, Q8_0KnownBlock) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16) / 16.0f;  // -1 .. 0.9375
  std::vector<uint8_t> q(34);
  quantize_row_ref(GgmlType::Q8_0, x.data(), q.data(), 32);
  uint16_t d;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(d, fp32_to_fp16(1.0f / 127));
  EXPECT_EQ(static_cast<int8_t>(q[2]), -127);
  EXPECT_EQ(static_cast<int8_t>(q[2 + 8]), static_cast<int8_t>(std::round(-0.5f * 127)));  // -63.5 -> -64
  std::vector<float> back(32);
  dequantize_row_ref(GgmlType::Q8_0, q.data(), back.data(), 32);
  EXPECT_NEAR(back[0], -1.0f, 1e-3f);
}

TEST(Reference, Q4_0KnownBlock) {
  std::vector<float> x(32, 0.0f);
  x[3] = -8.0f;  // the extreme value maps to level 0 with d = 1
  x[20] = 7.0f;
  std::vector<uint8_t> q(18);
  quantize_row_ref(GgmlType::Q4_0, x.data(), q.data(), 32);
  uint16_t d;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(d, fp32_to_fp16(1.0f));
  EXPECT_EQ(q[2 + 3] & 0xF, 0);
  EXPECT_EQ(q[2 + 4] >> 4, 15);  // element 20 = 16 + 4: high nibble of byte 4
  EXPECT_EQ(q[2 + 0] & 0xF, 8);  // zero
  std::vector<float> back(32);
  dequantize_row_ref(GgmlType::Q4_0, q.data(), back.data(), 32);
  EXPECT_EQ(back[3], -8.0f);
  EXPECT_EQ(back[20], 7.0f);
  EXPECT_EQ(back[0], 0.0f);
}

struct RoundTrip {
  GgmlType type;
  double bound;  // RMS error bound on N(0, 1) data
};

// Bounds, from the step size of each format on Gaussian data (uniform rounding error has RMS step / sqrt(12);
// the expected max |x| of 32 samples is ~2.1, of 16 ~1.8, of 256 ~2.8; the expected range of 32 is ~4.1) with
// ~30% margin. The K-quant fitting only lowers these:
//   Q8_0  step 2.1/127       -> 0.0048, bound 0.0065     Q8_K  step 2.8/127 -> 0.0064, bound 0.0085
//   Q4_0  step 2.1/8         -> 0.076,  bound 0.10       Q4_1  step 4.1/15  -> 0.079,  bound 0.10
//   Q5_0  step 2.1/16        -> 0.038,  bound 0.05       Q5_1  step 4.1/31  -> 0.038,  bound 0.05
//   Q2_K  step 3.5/3 (16)    -> 0.34,   bound 0.44       Q3_K  step 1.8/4 (16) -> 0.13, bound 0.17
//   Q4_K  step 4.1/15 (32)   -> 0.079,  bound 0.10       Q5_K  step 4.1/31  -> 0.038,  bound 0.05
//   Q6_K  step 1.8/32 (16)   -> 0.016,  bound 0.021
//   F16   relative 2^-11/sqrt(3) -> 2.8e-4, bound 3.7e-4 BF16 2^-8/sqrt(3) -> 2.3e-3, bound 3e-3
class QuantizeRoundTrip : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(QuantizeRoundTrip, RmsErrorWithinBound) {
  const RoundTrip p = GetParam();
  const int64_t n = 256 * 64;
  std::mt19937 rng(42);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> x(n), back(n);
  for (float& v : x) v = gauss(rng);
  std::vector<uint8_t> q(ggml_row_bytes(p.type, n));
  quantize_row_ref(p.type, x.data(), q.data(), n);
  dequantize_row_ref(p.type, q.data(), back.data(), n);
  double sum2 = 0;
  for (int64_t i = 0; i < n; ++i) sum2 += (x[i] - back[i]) * static_cast<double>(x[i] - back[i]);
  const double rms = std::sqrt(sum2 / n);
  EXPECT_LT(rms, p.bound) << ggml_type_name(p.type);
  EXPECT_GT(rms, p.bound / 20) << ggml_type_name(p.type) << ": suspiciously exact";
  // quantize_row (the fast entry point) gives the same bytes.
  std::vector<uint8_t> q2(q.size());
  quantize_row(p.type, x.data(), q2.data(), n);
  EXPECT_EQ(q, q2);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, QuantizeRoundTrip,
    ::testing::Values(RoundTrip{GgmlType::Q8_0, 0.0065}, RoundTrip{GgmlType::Q8_K, 0.0085},
                      RoundTrip{GgmlType::Q4_0, 0.10}, RoundTrip{GgmlType::Q4_1, 0.10}, RoundTrip{GgmlType::Q5_0, 0.05},
                      RoundTrip{GgmlType::Q5_1, 0.05}, RoundTrip{GgmlType::Q2_K, 0.44}, RoundTrip{GgmlType::Q3_K, 0.17},
                      RoundTrip{GgmlType::Q4_K, 0.10}, RoundTrip{GgmlType::Q5_K, 0.05}, RoundTrip{GgmlType::Q6_K, 0.021},
                      RoundTrip{GgmlType::F16, 3.7e-4}, RoundTrip{GgmlType::BF16, 3e-3}),
    [](const auto& info) { return std::string(ggml_type_name(info.param.type)); });

TEST(Reference, ZeroBlocksStayZero) {
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                        GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    std::vector<float> x(256, 0.0f), back(256, 1.0f);
    std::vector<uint8_t> q(ggml_row_bytes(type, 256));
    quantize_row_ref(type, x.data(), q.data(), 256);
    dequantize_row_ref(type, q.data(), back.data(), 256);
    for (float v : back) ASSERT_EQ(v, 0.0f) << ggml_type_name(type);
  }
}

TEST(Reference, UnsupportedTypesAreRefusedByName) {
  std::vector<float> x(256);
  std::vector<uint8_t> q(1024);
  try {
    dequantize_row_ref(GgmlType::IQ2_XS, q.data(), x.data(), 256);
    FAIL() << "IQ2_XS was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "tensor type IQ2_XS is not supported yet");
  }
  EXPECT_THROW(quantize_row_ref(GgmlType::TQ1_0, x.data(), q.data(), 256), std::runtime_error);
  EXPECT_THROW(activation_type(GgmlType::IQ4_NL), std::runtime_error);
  EXPECT_THROW(gemm(GgmlType::IQ3_S, q.data(), 110, 256, 0, 1, q.data(), 292, 1, x.data(), 1), std::runtime_error);
  EXPECT_THROW(quantize_row_ref(GgmlType::Q4_K, x.data(), q.data(), 100), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::quant
