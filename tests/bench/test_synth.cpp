// `synth` output is a llama GGUF that the reader, the model loader, the engine and the tokenizer all accept.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "model/llama.h"
#include "model/synth.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"

namespace tessera::model {
namespace {

std::vector<uint8_t> synth_bytes(const std::string& type, uint64_t seed = 1, int n_threads = 2) {
  SynthOptions options;
  options.preset = find_synth_preset("tiny");
  options.type = type;
  options.seed = seed;
  options.n_threads = n_threads;
  return make_synth_writer(options, nullptr).to_bytes();
}

TEST(Synth, PresetsMatchTheIssueTable) {
  const SynthPreset& tl = find_synth_preset("tinyllama-1.1b");
  EXPECT_EQ(tl.n_embd, 2048);
  EXPECT_EQ(tl.n_layer, 22);
  EXPECT_EQ(tl.n_head_kv, 4);
  EXPECT_EQ(tl.n_ff, 5632);
  const SynthPreset& l3 = find_synth_preset("llama3-8b");
  EXPECT_EQ(l3.n_vocab, 128256);
  EXPECT_EQ(l3.rope_base, 500000.0f);
  EXPECT_EQ(find_synth_preset("mistral-7b").n_ff, 14336);
  EXPECT_EQ(find_synth_preset("llama2-7b").n_head_kv, 32);
  EXPECT_THROW(find_synth_preset("gpt-5"), std::invalid_argument);
}

TEST(Synth, TinyQ4KMHasLlamaCppKeysNamesShapesAndTypes) {
  const std::vector<uint8_t> bytes = synth_bytes("Q4_K_M");
  const gguf::File file = gguf::File::parse(bytes);
  EXPECT_EQ(file.architecture(), "llama");
  EXPECT_EQ(file.get_int("llama.embedding_length"), 256);
  EXPECT_EQ(file.get_int("llama.block_count"), 2);
  EXPECT_EQ(file.get_int("llama.feed_forward_length"), 768);
  EXPECT_EQ(file.get_int("llama.attention.head_count"), 4);
  EXPECT_EQ(file.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(file.get_int("llama.rope.dimension_count"), 64);
  EXPECT_EQ(file.get_int("llama.context_length"), 512);
  EXPECT_EQ(file.get_int("llama.vocab_size"), 512);
  EXPECT_EQ(file.get_int("general.file_type"), 15);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
  EXPECT_EQ(file.get_int("general.quantization_version"), 2);
  EXPECT_NEAR(*file.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT_EQ(file.get_float("llama.rope.freq_base"), 10000.0);
  EXPECT_TRUE(file.get_string("general.name").has_value());

  ASSERT_EQ(file.tensors().size(), 3u + 2 * 9);
  const gguf::TensorInfo* embd = file.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->shape, (std::vector<uint64_t>{256, 512}));
  EXPECT_EQ(embd->type, GgmlType::Q4_K);
  EXPECT_EQ(file.find_tensor("output.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(file.find_tensor("output_norm.weight")->type, GgmlType::F32);
  EXPECT_EQ(file.find_tensor("blk.1.attn_k.weight")->shape, (std::vector<uint64_t>{256, 128}));
  EXPECT_EQ(file.find_tensor("blk.0.ffn_down.weight")->shape, (std::vector<uint64_t>{768, 256}));
  EXPECT_EQ(file.find_tensor("blk.0.ffn_gate.weight")->type, GgmlType::Q4_K);
  // Same type mix as llama-quantize's Q4_K_M of the same shapes (tests fixture tiny-llama-Q4_K_M.gguf).
  const gguf::File reference = gguf::File::open(test::fixture("models/tiny-llama-Q4_K_M.gguf").string());
  for (const gguf::TensorInfo& t : reference.tensors()) {
    const gguf::TensorInfo* ours = file.find_tensor(t.name);
    ASSERT_NE(ours, nullptr) << t.name;
    EXPECT_EQ(ours->type, t.type) << t.name;
    EXPECT_EQ(ours->shape, t.shape) << t.name;
  }
}

TEST(Synth, WeightsAreSmallNormalAndNormsNearOne) {
  const std::vector<uint8_t> bytes = synth_bytes("F32");
  const gguf::File file = gguf::File::parse(bytes);
  const gguf::TensorInfo* w = file.find_tensor("blk.0.ffn_up.weight");
  ASSERT_EQ(w->type, GgmlType::F32);
  const float* v = reinterpret_cast<const float*>(w->data);
  double sum = 0, sq = 0;
  float max_abs = 0;
  for (uint64_t i = 0; i < w->n_elements; ++i) {
    sum += v[i];
    sq += static_cast<double>(v[i]) * v[i];
    max_abs = std::max(max_abs, std::fabs(v[i]));
  }
  const double n = static_cast<double>(w->n_elements);
  EXPECT_NEAR(sum / n, 0.0, 5e-4);
  EXPECT_NEAR(std::sqrt(sq / n), 0.02, 5e-4);
  EXPECT_GT(max_abs, 0.05f);  // a bell, not a narrow uniform
  const float* norm = reinterpret_cast<const float*>(file.find_tensor("blk.1.ffn_norm.weight")->data);
  double norm_sum = 0;
  for (int i = 0; i < 256; ++i) norm_sum += norm[i];
  EXPECT_NEAR(norm_sum / 256, 1.0, 0.03);
}

TEST(Synth, SameSeedSameBytesWhateverTheThreadCount) {
  const std::vector<uint8_t> a = synth_bytes("Q4_0", 7, 1);
  EXPECT_EQ(a, synth_bytes("Q4_0", 7, 3));
  EXPECT_NE(a, synth_bytes("Q4_0", 8, 1));
}

TEST(Synth, LoadsAndRunsInTheEngine) {
  const std::vector<uint8_t> bytes = synth_bytes("Q4_K_M");
  const gguf::File file = gguf::File::parse(bytes);
  const LlamaModel model = LlamaModel::load(file);
  EXPECT_EQ(model.config.n_vocab, 512);
  EXPECT_EQ(model.config.head_dim, 64);
  EXPECT_FALSE(model.tied_embeddings);

  engine::EngineOptions options;
  options.n_threads = 2;
  options.n_ctx = 64;
  engine::Engine engine(file, options);
  const int32_t seq = engine.new_sequence();
  const std::vector<int32_t> prompt = {1, 300, 301, 302, 17};
  const std::span<const float> logits = engine.eval(seq, prompt);
  ASSERT_EQ(logits.size(), 512u);
  float spread = 0;
  for (float l : logits) {
    ASSERT_TRUE(std::isfinite(l));
    spread = std::max(spread, std::fabs(l - logits[0]));
  }
  EXPECT_GT(spread, 0.0f);  // random weights give different logits, not a constant row
}

TEST(Synth, SyntheticVocabularyTokenizesAndRoundTrips) {
  const std::vector<uint8_t> bytes = synth_bytes("Q8_0");
  const gguf::File file = gguf::File::parse(bytes);
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(file);
  EXPECT_EQ(tok.n_vocab(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.token_type(3 + 'A'), tokenizer::TokenType::Byte);
  const std::string text = "hello world, Zebra 42!";
  const std::vector<int32_t> ids = tok.encode(text, true, false);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_LT(ids.size(), text.size());  // the generated pieces merge letters
  // Without the BOS, decoding drops the space the tokenizer put in front (llama.cpp does the same).
  EXPECT_EQ(tok.decode(std::span<const int32_t>(ids).subspan(1)), text);
}

TEST(Synth, SyntheticVocabularyHasUniquePiecesOfEveryPresetSize) {
  for (int n : {512, 32000, 128256}) {
    const SynthVocab v = make_synth_vocab(n);
    ASSERT_EQ(v.tokens.size(), static_cast<size_t>(n));
    ASSERT_EQ(v.scores.size(), static_cast<size_t>(n));
    ASSERT_EQ(v.types.size(), static_cast<size_t>(n));
    EXPECT_EQ(std::set<std::string>(v.tokens.begin(), v.tokens.end()).size(), static_cast<size_t>(n));
  }
  EXPECT_THROW(make_synth_vocab(100), std::invalid_argument);
}

TEST(Synth, VocabFromCopiesTheTokenizerKeys) {
  const gguf::File source = gguf::File::open(test::fixture("trained/stories260K.gguf").string());
  SynthOptions options;
  options.preset = find_synth_preset("tiny");
  options.type = "Q8_0";
  const std::vector<uint8_t> bytes = make_synth_writer(options, &source).to_bytes();
  const gguf::File file = gguf::File::parse(bytes);
  for (const auto& [key, value] : source.metadata()) {
    if (!key.starts_with("tokenizer.")) continue;
    const gguf::Value* copied = file.find(key);
    ASSERT_NE(copied, nullptr) << key;
    EXPECT_EQ(*copied, value) << key;
  }
  EXPECT_EQ(file.get_int("llama.vocab_size"), static_cast<int64_t>(source.get_string_array("tokenizer.ggml.tokens")->size()));
  EXPECT_EQ(file.find_tensor("output.weight")->shape[1], source.get_string_array("tokenizer.ggml.tokens")->size());
}

TEST(Synth, UnknownTypeIsRefused) {
  SynthOptions options;
  options.preset = find_synth_preset("tiny");
  options.type = "Q9_Z";
  EXPECT_THROW(make_synth_writer(options, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::model
