// The reader on every fixture file: real values from fixtures/README.md and fixtures/trained/README.md.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "gguf/gguf.h"

namespace tessera::gguf {
namespace {

using Shape = std::vector<uint64_t>;
using test::fixture;

struct TypeMix {
  const char* file;
  GgmlType token_embd;
  GgmlType output;
  GgmlType block_weight;  // blk.0.attn_q.weight
};

// From the type table in fixtures/README.md.
const TypeMix kMainFamily[] = {
    {"tiny-llama-F32.gguf", GgmlType::F32, GgmlType::F32, GgmlType::F32},
    {"tiny-llama-F16.gguf", GgmlType::F16, GgmlType::F16, GgmlType::F16},
    {"tiny-llama-Q8_0.gguf", GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0},
    {"tiny-llama-Q6_K.gguf", GgmlType::Q6_K, GgmlType::Q6_K, GgmlType::Q6_K},
    {"tiny-llama-Q5_K_M.gguf", GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_K},
    {"tiny-llama-Q5_1.gguf", GgmlType::Q5_1, GgmlType::Q6_K, GgmlType::Q5_1},
    {"tiny-llama-Q5_0.gguf", GgmlType::Q5_0, GgmlType::Q6_K, GgmlType::Q5_0},
    {"tiny-llama-Q4_K_M.gguf", GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K},
    {"tiny-llama-Q4_1.gguf", GgmlType::Q4_1, GgmlType::Q6_K, GgmlType::Q4_1},
    {"tiny-llama-Q4_0.gguf", GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::Q4_0},
    {"tiny-llama-Q3_K_M.gguf", GgmlType::Q3_K, GgmlType::Q6_K, GgmlType::Q3_K},
    {"tiny-llama-Q2_K.gguf", GgmlType::Q2_K, GgmlType::Q6_K, GgmlType::Q2_K},
};

void expect_tiny_llama_hparams(const File& f, uint64_t n_vocab) {
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_uint("llama.embedding_length"), 256u);
  EXPECT_EQ(f.get_uint("llama.feed_forward_length"), 768u);
  EXPECT_EQ(f.get_uint("llama.block_count"), 2u);
  EXPECT_EQ(f.get_uint("llama.attention.head_count"), 4u);
  EXPECT_EQ(f.get_uint("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(f.get_uint("llama.context_length"), 512u);
  EXPECT_FLOAT_EQ(*f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  ASSERT_NE(f.get_string_array("tokenizer.ggml.tokens"), nullptr);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens")->size(), n_vocab);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.eos_token_id"), 2u);
}

void expect_tiny_llama_shapes(const File& f, uint64_t n_vocab) {
  const std::map<std::string, Shape> expected = {
      {"token_embd.weight", {256, n_vocab}},    {"output_norm.weight", {256}},
      {"blk.0.attn_q.weight", {256, 256}},      {"blk.0.attn_k.weight", {256, 128}},
      {"blk.1.attn_v.weight", {256, 128}},      {"blk.1.attn_output.weight", {256, 256}},
      {"blk.0.ffn_gate.weight", {256, 768}},    {"blk.1.ffn_up.weight", {256, 768}},
      {"blk.1.ffn_down.weight", {768, 256}},    {"blk.0.attn_norm.weight", {256}},
  };
  for (const auto& [name, shape] : expected) {
    const TensorInfo* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->shape, shape) << name;
    EXPECT_EQ(t->data, f.bytes().data() + f.data_offset() + t->offset) << name;
  }
}

TEST(GgufFixtures, MainFamilyTypesShapesAndHyperParameters) {
  for (const TypeMix& mix : kMainFamily) {
    SCOPED_TRACE(mix.file);
    const File f = File::open(fixture(std::string("models/") + mix.file));
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    EXPECT_EQ(f.tensors().size(), 21u);  // token_embd, output, output_norm, 2 x (7 weights + 2 norms)
    expect_tiny_llama_hparams(f, 512);
    expect_tiny_llama_shapes(f, 512);
    EXPECT_EQ(f.find_tensor("token_embd.weight")->type, mix.token_embd);
    EXPECT_EQ(f.find_tensor("output.weight")->type, mix.output);
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, mix.block_weight);
    EXPECT_EQ(f.find_tensor("blk.0.ffn_norm.weight")->type, GgmlType::F32);
    uint64_t n_params = 0;
    for (const TensorInfo& t : f.tensors()) n_params += t.n_elements;
    EXPECT_EQ(n_params, 1836288u);
  }
}

TEST(GgufFixtures, MixedQuantTypesPerTensor) {
  const File q4km = File::open(fixture("models/tiny-llama-Q4_K_M.gguf"));
  EXPECT_EQ(q4km.get_uint("general.file_type"), 15u);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
  EXPECT_EQ(q4km.find_tensor("blk.1.attn_v.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(q4km.find_tensor("blk.1.ffn_down.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(q4km.find_tensor("blk.0.ffn_down.weight")->type, GgmlType::Q4_K);
  const File q3km = File::open(fixture("models/tiny-llama-Q3_K_M.gguf"));
  EXPECT_EQ(q3km.get_uint("general.file_type"), 12u);
  EXPECT_EQ(q3km.find_tensor("blk.0.attn_output.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(q3km.find_tensor("blk.0.attn_v.weight")->type, GgmlType::Q5_K);
  const File q2k = File::open(fixture("models/tiny-llama-Q2_K.gguf"));
  EXPECT_EQ(q2k.get_uint("general.file_type"), 10u);
  EXPECT_EQ(q2k.find_tensor("blk.0.attn_v.weight")->type, GgmlType::Q3_K);
  EXPECT_EQ(File::open(fixture("models/tiny-llama-F32.gguf")).get_uint("general.file_type"), 0u);
  EXPECT_EQ(File::open(fixture("models/tiny-llama-Q8_0.gguf")).get_uint("general.file_type"), 7u);
}

TEST(GgufFixtures, TiedV32kModel) {
  const File f = File::open(fixture("models/tiny-llama-v32k-Q4_K_M.gguf"));
  expect_tiny_llama_hparams(f, 32000);
  expect_tiny_llama_shapes(f, 32000);
  EXPECT_EQ(f.tensors().size(), 20u);
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(f.find_tensor("token_embd.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token"), true);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.unknown_token_id"), 0u);
}

TEST(GgufFixtures, Stories260K) {
  const File f = File::open(fixture("trained/stories260K.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.data_offset(), 14176u);
  EXPECT_EQ(f.get_string("general.name"), "llama");
  EXPECT_EQ(f.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get_int("llama.block_count"), 5);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 8);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 172);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 8);
  EXPECT_EQ(f.get_int("llama.context_length"), 2048);
  EXPECT_FLOAT_EQ(*f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_FALSE(f.get_float("llama.rope.freq_base").has_value());
  EXPECT_FALSE(f.get_uint("general.file_type").has_value());
  EXPECT_EQ(f.get_uint("tokenizer.ggml.seperator_token_id"), 4294967295u);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.padding_token_id"), 4294967295u);
  ASSERT_EQ(f.tensors().size(), 48u);
  uint64_t n_params = 0;
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.type, GgmlType::F32) << t.name;
    n_params += t.n_elements;
  }
  EXPECT_EQ(n_params, 292800u);
  EXPECT_EQ(f.find_tensor("token_embd.weight")->shape, (Shape{64, 512}));
  EXPECT_EQ(f.find_tensor("blk.4.attn_k.weight")->shape, (Shape{64, 32}));
  EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->shape, (Shape{172, 64}));
  EXPECT_EQ(f.find_tensor("blk.2.ffn_up.weight")->shape, (Shape{64, 172}));
  const TensorInfo* embd = f.find_tensor("token_embd.weight");
  const TensorInfo* output = f.find_tensor("output.weight");
  ASSERT_EQ(embd->n_bytes, output->n_bytes);
  EXPECT_EQ(std::memcmp(embd->data, output->data, embd->n_bytes), 0);  // the tied copy
  const std::vector<std::string>* tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_EQ(tokens->size(), 512u);
  EXPECT_EQ((*tokens)[0], "<unk>");
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[13], "<0x0A>");
  const std::optional<std::vector<float>> scores = f.get_float_array("tokenizer.ggml.scores");
  ASSERT_TRUE(scores.has_value());
  EXPECT_FLOAT_EQ(scores->back(), -252.0f);
  const std::optional<std::vector<int64_t>> types = f.get_int_array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.has_value());
  EXPECT_EQ((*types)[1], 3);  // control
  EXPECT_EQ((*types)[3], 6);  // byte
}

TEST(GgufFixtures, Llama2TinyRandom) {
  const File f = File::open(fixture("trained/llama-2-tiny-random.gguf"));
  EXPECT_EQ(f.get_string("general.name"), "LLaMA v2");
  EXPECT_EQ(f.get_uint("general.file_type"), 1u);
  EXPECT_EQ(f.get_uint("llama.embedding_length"), 8u);
  EXPECT_EQ(f.get_uint("llama.block_count"), 1u);
  EXPECT_EQ(f.get_uint("llama.feed_forward_length"), 32u);
  EXPECT_EQ(f.get_uint("llama.context_length"), 4096u);
  ASSERT_EQ(f.tensors().size(), 12u);
  int n_f16 = 0;
  uint64_t n_params = 0;
  for (const TensorInfo& t : f.tensors()) {
    n_f16 += t.type == GgmlType::F16;
    n_params += t.n_elements;
  }
  EXPECT_EQ(n_f16, 9);
  EXPECT_EQ(n_params, 513048u);
  EXPECT_EQ(f.find_tensor("output.weight")->shape, (Shape{8, 32000}));
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens")->size(), 32000u);
}

TEST(GgufFixtures, EveryVocabFileReads) {
  const std::map<std::string, std::string> model_by_file = {
      {"ggml-vocab-bert-bge.gguf", "bert"},      {"ggml-vocab-deepseek-coder.gguf", "gpt2"},
      {"ggml-vocab-deepseek-llm.gguf", "gpt2"},  {"ggml-vocab-falcon.gguf", "gpt2"},
      {"ggml-vocab-gpt-2.gguf", "gpt2"},         {"ggml-vocab-llama-spm.gguf", "llama"},
      {"ggml-vocab-mpt.gguf", "gpt2"},           {"ggml-vocab-phi-3.gguf", "llama"},
      {"ggml-vocab-refact.gguf", "gpt2"},        {"ggml-vocab-starcoder.gguf", "gpt2"},
  };
  for (const auto& [file, model] : model_by_file) {
    SCOPED_TRACE(file);
    const File f = File::open(fixture("vocab/" + file));
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_EQ(f.get_string("tokenizer.ggml.model"), model);
    const std::vector<std::string>* tokens = f.get_string_array("tokenizer.ggml.tokens");
    ASSERT_NE(tokens, nullptr);
    EXPECT_GT(tokens->size(), 1000u);
    EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type")->size(), tokens->size());
  }
  EXPECT_EQ(File::open(fixture("vocab/ggml-vocab-llama-spm.gguf")).get_string_array("tokenizer.ggml.tokens")->size(),
            32000u);
}

TEST(GgufFixtures, GettersRefuseTheWrongType) {
  const File f = File::open(fixture("trained/stories260K.gguf"));
  EXPECT_THROW(f.get_string("llama.block_count"), FormatError);
  EXPECT_THROW(f.get_int("general.name"), FormatError);
  EXPECT_THROW(f.get_float("llama.block_count"), FormatError);
  EXPECT_THROW(f.get_string_array("tokenizer.ggml.scores"), FormatError);
  EXPECT_THROW(f.get_int_array("tokenizer.ggml.scores"), FormatError);
  EXPECT_THROW(f.get_bool("general.architecture"), FormatError);
  try {
    f.get_string("llama.block_count");
  } catch (const FormatError& e) {
    EXPECT_STREQ(e.what(), "metadata key 'llama.block_count' has type u32, expected string");
  }
  EXPECT_EQ(f.get_string_array("no.such.key"), nullptr);
  EXPECT_FALSE(f.get_int("no.such.key").has_value());
}

TEST(GgufFixtures, OpenReportsMissingFiles) {
  try {
    File::open("/nonexistent/model.gguf");
    FAIL() << "opened a missing file";
  } catch (const FormatError&) {
    FAIL() << "a missing file is not a format error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open '/nonexistent/model.gguf'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::gguf
