// Per-tensor type choice of the presets: the same types llama-quantize chose for the fixtures.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "gguf/gguf.h"
#include "quant/quantize_model.h"

namespace tessera::quant {
namespace {

std::vector<TensorToQuantize> tensors_of(const gguf::File& f) {
  std::vector<TensorToQuantize> out;
  for (const gguf::TensorInfo& t : f.tensors()) out.push_back({t.name, t.shape, t.type});
  return out;
}

class PresetTypes : public ::testing::TestWithParam<const char*> {};

TEST_P(PresetTypes, MatchLlamaQuantizeFixture) {
  const gguf::File f32 = gguf::File::open(test::fixture("models/tiny-llama-F32.gguf").string());
  const gguf::File made = gguf::File::open(test::fixture(std::string("models/tiny-llama-") + GetParam() + ".gguf").string());
  const std::vector<TensorToQuantize> tensors = tensors_of(f32);
  const std::vector<GgmlType> types = choose_tensor_types(parse_model_quant_type(GetParam()), tensors, 2);
  ASSERT_EQ(types.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(ggml_type_name(types[i]), ggml_type_name(made.find_tensor(tensors[i].name)->type)) << tensors[i].name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PresetTypes,
                         ::testing::Values("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0",
                                           "Q3_K_M", "Q2_K"));

TEST(PresetTypes, TiedEmbeddingBecomesQ6_K) {
  // Without output.weight the token embedding doubles as the output matrix and gets its type.
  std::vector<TensorToQuantize> tensors = {{"token_embd.weight", {256, 32000}}, {"blk.0.attn_v.weight", {256, 128}},
                                           {"blk.0.attn_norm.weight", {256}}};
  const std::vector<GgmlType> types = choose_tensor_types(ModelQuantType::Q4_K_M, tensors, 1);
  EXPECT_EQ(types[0], GgmlType::Q6_K);
  EXPECT_EQ(types[1], GgmlType::Q6_K);  // the only layer is both first and last: use_more_bits
  EXPECT_EQ(types[2], GgmlType::F32);
}

TEST(PresetTypes, IncompatibleRowLengthsFallBack) {
  std::vector<TensorToQuantize> tensors = {{"output.weight", {4160, 10}},          // 4160 = 65 * 64: not / 256
                                           {"blk.0.attn_q.weight", {4160, 4160}},  // Q4_K -> Q5_0
                                           {"blk.0.ffn_up.weight", {100, 7}}};     // not / 32 either -> F16
  std::vector<std::string> notes;
  const std::vector<GgmlType> types = choose_tensor_types(ModelQuantType::Q4_K_M, tensors, 1, &notes);
  EXPECT_EQ(types[0], GgmlType::Q8_0);
  EXPECT_EQ(types[1], GgmlType::Q5_0);
  EXPECT_EQ(types[2], GgmlType::F16);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("blk.0.attn_q.weight"), std::string::npos);
}

TEST(PresetTypes, NamesAndFileTypes) {
  EXPECT_EQ(file_type_id(parse_model_quant_type("Q4_K_M")), 15u);
  EXPECT_EQ(file_type_id(parse_model_quant_type("Q8_0")), 7u);
  EXPECT_EQ(file_type_id(parse_model_quant_type("BF16")), 32u);
  EXPECT_EQ(model_quant_type_name(ModelQuantType::Q3_K_L), "Q3_K_L");
  EXPECT_THROW(parse_model_quant_type("Q4_K_X"), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::quant

namespace tessera::quant {
namespace {

class QuantizeModelFile : public ::testing::TestWithParam<const char*> {};

// The whole path: quantize_model on the F32 fixture writes the types and the bytes llama-quantize wrote.
TEST_P(QuantizeModelFile, SameTensorsAsLlamaQuantize) {
  const std::string preset = GetParam();
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() / ("tessera-test-quant-" + std::to_string(::getpid()) + "-" + preset + ".gguf");
  std::vector<size_t> seen;
  const QuantizeResult result = quantize_model(test::fixture("models/tiny-llama-F32.gguf").string(), out.string(),
                                               parse_model_quant_type(preset), 2, false,
                                               [&](const QuantizeProgress& p) { seen.push_back(p.tensor_index); });
  const gguf::File ours = gguf::File::open(out.string());
  const gguf::File made = gguf::File::open(test::fixture("models/tiny-llama-" + preset + ".gguf").string());
  std::filesystem::remove(out);  // the mapping stays valid
  EXPECT_EQ(seen.size(), made.tensors().size());
  EXPECT_TRUE(result.notes.empty());
  EXPECT_EQ(ours.get_uint("general.file_type"), file_type_id(parse_model_quant_type(preset)));
  EXPECT_EQ(ours.get_uint("general.quantization_version"), 2u);
  ASSERT_EQ(ours.tensors().size(), made.tensors().size());
  for (const gguf::TensorInfo& theirs : made.tensors()) {
    const gguf::TensorInfo* mine = ours.find_tensor(theirs.name);
    ASSERT_NE(mine, nullptr) << theirs.name;
    ASSERT_EQ(ggml_type_name(mine->type), ggml_type_name(theirs.type)) << theirs.name;
    ASSERT_EQ(mine->shape, theirs.shape) << theirs.name;
    ASSERT_EQ(mine->n_bytes, theirs.n_bytes) << theirs.name;
    EXPECT_EQ(std::memcmp(mine->data, theirs.data, theirs.n_bytes), 0) << theirs.name << " differs from llama-quantize's bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, QuantizeModelFile, ::testing::Values("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"));

TEST(QuantizeModelFile, RefusesQuantizedInputUnlessAllowed) {
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() / ("tessera-test-requant-" + std::to_string(::getpid()) + ".gguf");
  const std::string input = test::fixture("models/tiny-llama-Q8_0.gguf").string();
  EXPECT_THROW(quantize_model(input, out.string(), ModelQuantType::Q4_0, 1, false), std::runtime_error);
  EXPECT_FALSE(std::filesystem::exists(out));
  quantize_model(input, out.string(), ModelQuantType::Q4_0, 1, true);
  const gguf::File ours = gguf::File::open(out.string());
  std::filesystem::remove(out);
  EXPECT_EQ(ours.find_tensor("blk.0.attn_q.weight")->type, GgmlType::Q4_0);
  EXPECT_EQ(ours.find_tensor("output.weight")->type, GgmlType::Q6_K);
}

}  // namespace
}  // namespace tessera::quant
