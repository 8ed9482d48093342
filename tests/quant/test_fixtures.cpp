// Bit-compatibility with llama.cpp: quantizing the F32 fixture's tensors with quantize_row_ref reproduces the
// bytes llama-quantize wrote into the quantized fixtures.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "quant/quant.h"
#include "gguf/gguf.h"

namespace tessera::quant {
namespace {

struct BlockMatch {
  uint64_t same = 0;
  uint64_t total = 0;
};

// Requantizes every tensor of `fixture_name` from the F32 fixture and counts identical blocks per type.
std::map<GgmlType, BlockMatch> compare_with_fixture(const std::string& fixture_name) {
  const gguf::File f32 = gguf::File::open(test::fixture("models/tiny-llama-F32.gguf").string());
  const gguf::File quantized = gguf::File::open(test::fixture("models/" + fixture_name).string());
  std::map<GgmlType, BlockMatch> matches;
  for (const gguf::TensorInfo& t : quantized.tensors()) {
    const gguf::TensorInfo& src = *f32.find_tensor(t.name);
    EXPECT_EQ(src.type, GgmlType::F32) << t.name;
    const GgmlTypeTraits& traits = ggml_type_traits(t.type);
    const uint64_t n = t.n_elements;
    std::vector<uint8_t> out(n / traits.block_size * traits.block_bytes);
    quantize_row_ref(t.type, reinterpret_cast<const float*>(src.data), out.data(), static_cast<int64_t>(n));
    BlockMatch& m = matches[t.type];
    const uint64_t unit = traits.block_size == 1 ? 4096 * traits.block_bytes : traits.block_bytes;
    for (uint64_t off = 0; off < out.size(); off += unit) {
      const uint64_t len = std::min<uint64_t>(unit, out.size() - off);
      m.same += std::memcmp(out.data() + off, t.data + off, len) == 0;
      ++m.total;
    }
  }
  return matches;
}

class FixtureBits : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureBits, ReferenceQuantizerReproducesLlamaQuantize) {
  const std::string file = std::string("tiny-llama-") + GetParam() + ".gguf";
  for (const auto& [type, m] : compare_with_fixture(file)) {
    const double fraction = static_cast<double>(m.same) / static_cast<double>(m.total);
    std::printf("%-22s %-5s %llu / %llu blocks identical (%.4f)\n", file.c_str(),
                std::string(ggml_type_name(type)).c_str(), static_cast<unsigned long long>(m.same),
                static_cast<unsigned long long>(m.total), fraction);
    EXPECT_EQ(m.same, m.total) << file << " " << ggml_type_name(type);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, FixtureBits,
                         ::testing::Values("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0",
                                           "Q3_K_M", "Q2_K"));

}  // namespace
}  // namespace tessera::quant
