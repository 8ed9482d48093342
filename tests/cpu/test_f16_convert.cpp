// The bulk f16 conversions of the KV cache give the same bits as the scalar quant::fp16_to_fp32 / fp32_to_fp16,
// on every class of value (normal, subnormal, zero, overflow, infinity, NaN) and on lengths with a tail.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cpu/f16_convert.h"
#include "quant/quant.h"

namespace tessera::cpu {
namespace {

TEST(F16Convert, EveryHalfToFloat) {
  std::vector<uint16_t> halves(65536 + 3);  // + 3: a tail after the vector loop
  for (size_t i = 0; i < halves.size(); ++i) halves[i] = static_cast<uint16_t>(i);
  std::vector<float> got(halves.size());
  f16_to_f32(halves.data(), got.data(), static_cast<int64_t>(halves.size()));
  for (size_t i = 0; i < halves.size(); ++i) {
    const float want = quant::fp16_to_fp32(halves[i]);
    if (std::isnan(want)) {  // F16C sets the quiet bit of a signaling NaN; the cache only ever holds quiet ones
      ASSERT_TRUE(std::isnan(got[i])) << "half 0x" << std::hex << halves[i];
      continue;
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want)) << "half 0x" << std::hex << halves[i];
  }
}

TEST(F16Convert, FloatToHalfRoundsLikeTheReference) {
  // Bit patterns spread over all 2^32 floats (a stride prime to every power of two), then the boundaries: the
  // largest half and the halfway points around it, the smallest subnormal half and half of it.
  std::vector<float> floats;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4099) {
    floats.push_back(std::bit_cast<float>(static_cast<uint32_t>(bits)));
  }
  for (float f : {65504.0f, 65519.0f, 65520.0f, 65536.0f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, -0.0f}) {
    floats.push_back(f);
    floats.push_back(-f);
  }
  floats.push_back(1.0f);  // an odd length
  std::vector<uint16_t> got(floats.size());
  f32_to_f16(floats.data(), got.data(), static_cast<int64_t>(floats.size()));
  for (size_t i = 0; i < floats.size(); ++i) {
    ASSERT_EQ(got[i], quant::fp32_to_fp16(floats[i]))
        << "float bits 0x" << std::hex << std::bit_cast<uint32_t>(floats[i]);
  }
}

}  // namespace
}  // namespace tessera::cpu
