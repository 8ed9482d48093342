// Models written by our own GGUF writer, run by the engine and by the double-precision reference forward
// (model/llama_reference.h): covers tied embeddings, MQA (one KV head), GQA and multi-sequence batches.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common/op_harness.h"
#include "common/random_model.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "model/llama_reference.h"

namespace tessera {
namespace {

using test::random_weights;
using test::Shape;
using test::Weights;
using test::write_model;

engine::EngineOptions f32_cache_options() {
  engine::EngineOptions o;
  o.n_threads = 2;
  o.n_ctx = 64;
  o.kv_format = KvFormat::F32;
  return o;
}

void expect_matches_reference(const Shape& shape, uint32_t seed) {
  const Weights w = random_weights(shape, seed);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  engine::Engine eng(file, f32_cache_options());
  EXPECT_EQ(eng.model().tied_embeddings, shape.tied);
  const std::vector<int32_t> tokens = {1, 17, 60, 5, 33, 33, 2, 40, 59};
  const std::vector<double> expected = model::reference_logits(eng.model(), tokens);
  const std::span<const float> got = eng.eval(eng.new_sequence(), tokens, true);
  EXPECT_TRUE(test::all_close(got, expected, {2e-4}, shape.n_vocab));
}

TEST(ReferenceForward, TiedEmbeddingsWithMqa) { expect_matches_reference(Shape{}, 1); }

TEST(ReferenceForward, SeparateOutputWithGqa) {
  Shape s;
  s.tied = false;
  s.n_head_kv = 2;
  s.rope_base = 500000;
  expect_matches_reference(s, 2);
}

TEST(ReferenceForward, PerLayerCountsThatAgree) {
  Shape s;
  s.per_layer_counts = true;
  s.n_head_kv = 2;
  expect_matches_reference(s, 4);
}

// RoPE over part of each head (rope.dimension_count 4 of head_dim 8), linear scaling and per-pair frequency
// divisors (rope_freqs.weight, as Llama 3.1 files carry): the engine follows the reference, and the keys do change
// the logits.
TEST(ReferenceForward, PartialRopeWithScalingAndFrequencyFactors) {
  Shape shape;
  shape.n_head_kv = 2;
  const Weights w = random_weights(shape, 6);
  const std::vector<float> freq_factors = {1.0f, 8.0f};
  const std::vector<uint8_t> scaled = write_model(shape, w, [&](gguf::Writer& out) {
    out.set("llama.rope.dimension_count", uint32_t{4});
    out.set("llama.rope.scaling.type", "linear");
    out.set("llama.rope.scaling.factor", 4.0f);
    out.add_tensor("rope_freqs.weight", GgmlType::F32, {2},
                   std::span(reinterpret_cast<const uint8_t*>(freq_factors.data()), sizeof(float) * 2));
  });
  const std::vector<uint8_t> plain = write_model(shape, w);
  const gguf::File scaled_file = gguf::File::parse(scaled), plain_file = gguf::File::parse(plain);
  engine::Engine eng(scaled_file, f32_cache_options());
  const model::RopeConfig& rope = eng.model().config.rope;
  ASSERT_EQ(rope.n_dims, 4);
  ASSERT_EQ(rope.freq_scale, 0.25f);
  ASSERT_EQ(rope.freq_factors, freq_factors);
  const std::vector<int32_t> tokens = {1, 17, 60, 5, 33, 33, 2, 40, 59, 12, 3, 44};
  const std::vector<double> expected = model::reference_logits(eng.model(), tokens);
  EXPECT_TRUE(test::all_close(eng.eval(eng.new_sequence(), tokens, true), expected, {2e-4}, shape.n_vocab));
  EXPECT_FALSE(test::all_close(model::reference_logits(model::LlamaModel::load(plain_file), tokens), expected, {1e-3},
                               shape.n_vocab));
}

// Layers of different shapes are refused with the key named, not misread.
TEST(ReferenceForward, PerLayerCountsThatDifferAreAClearError) {
  const Shape shape;
  const Weights w = random_weights(shape, 5);
  auto load_with = [&](const std::string& key, const gguf::Value& value) {
    const std::vector<uint8_t> bytes = write_model(shape, w, [&](gguf::Writer& out) { out.set(key, value); });
    const gguf::File file = gguf::File::parse(bytes);
    try {
      engine::Engine eng(file, f32_cache_options());
    } catch (const gguf::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  const std::string differ = load_with("llama.attention.head_count_kv", std::vector<int32_t>{1, 2});
  EXPECT_NE(differ.find("'llama.attention.head_count_kv' differs between layers"), std::string::npos) << differ;
  const std::string length = load_with("llama.feed_forward_length", std::vector<int32_t>{40, 40, 40});
  EXPECT_NE(length.find("3 per-layer values for 2 layers"), std::string::npos) << length;
  const std::string zero = load_with("llama.attention.head_count", std::vector<uint32_t>{4, 0});
  EXPECT_NE(zero.find("invalid value 0 for layer 1"), std::string::npos) << zero;
}

// A quantized rounding's blocks of 32 must be whole within a token's keys (as the backends refuse the format
// otherwise); keys and values round independently: each of the two moves the logits.
TEST(ReferenceForward, KvRoundingOfKeysAndValues) {
  Shape shape;  // head_dim 8
  const std::vector<uint8_t> one_head = write_model(shape, random_weights(shape, 7));
  const gguf::File one_head_file = gguf::File::parse(one_head);
  const model::LlamaModel small = model::LlamaModel::load(one_head_file);
  EXPECT_THROW(model::LlamaReference(small, {.kv_rounding = model::KvRounding::Q8_0}), std::invalid_argument);
  EXPECT_NO_THROW(model::LlamaReference(small, {.kv_rounding = model::KvRounding::BF16}));

  shape.n_head_kv = 4;  // one block of 32 spans the 4 heads
  const std::vector<uint8_t> bytes = write_model(shape, random_weights(shape, 7));
  const gguf::File file = gguf::File::parse(bytes);
  const model::LlamaModel m = model::LlamaModel::load(file);
  const std::vector<int32_t> tokens = {1, 17, 60, 5, 33, 33, 2, 40, 59};
  using model::KvRounding;
  const std::vector<double> exact = model::reference_logits(m, tokens);
  const std::vector<double> keys =
      model::reference_logits(m, tokens, {.kv_rounding = {KvRounding::Q4_0, KvRounding::None}});
  const std::vector<double> values =
      model::reference_logits(m, tokens, {.kv_rounding = {KvRounding::None, KvRounding::Q4_0}});
  const std::vector<double> both = model::reference_logits(m, tokens, {.kv_rounding = KvRounding::Q4_0});
  EXPECT_FALSE(test::all_close(keys, exact, {1e-4}));
  EXPECT_FALSE(test::all_close(values, exact, {1e-4}));
  EXPECT_FALSE(test::all_close(keys, both, {1e-4}));
  EXPECT_FALSE(test::all_close(values, both, {1e-4}));
}

// Two prompts in one step give each the logits it gets alone; so does a decode step that advances both
// sequences at once.
TEST(ReferenceForward, StepOfTwoSequencesEqualsEachAlone) {
  const Shape shape;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 3);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> a = {1, 4, 9, 16, 25, 36, 7}, b = {1, 50, 3, 7, 8};

  auto run_alone = [&](const std::vector<int32_t>& tokens) {
    engine::Engine eng(file, f32_cache_options());
    const std::span<const float> l = eng.eval(eng.new_sequence(), tokens, true);
    return std::vector<float>(l.begin(), l.end());
  };
  const std::vector<float> logits_a = run_alone(a), logits_b = run_alone(b);

  engine::Engine together(file, f32_cache_options());
  const int32_t sa = together.new_sequence(), sb = together.new_sequence();
  const std::span<const int32_t> prompt_a(a.data(), a.size() - 1), prompt_b(b.data(), b.size() - 1);
  const std::vector<engine::Engine::Chunk> prompts = {{sa, prompt_a, LogitsWanted::All},
                                                      {sb, prompt_b, LogitsWanted::All}};
  const std::span<const float> both = together.step(prompts);
  ASSERT_EQ(both.size(), (prompt_a.size() + prompt_b.size()) * V);
  for (size_t r = 0; r < prompt_a.size() + prompt_b.size(); ++r) {
    const float* expected = r < prompt_a.size() ? &logits_a[V * r] : &logits_b[V * (r - prompt_a.size())];
    for (int v = 0; v < V; ++v) ASSERT_NEAR(both[r * V + v], expected[v], 1e-5) << "row " << r << ", vocab " << v;
  }
  // The last token of each prompt as one decode step over both sequences.
  const std::vector<engine::Engine::Chunk> step = {{sa, std::span(&a.back(), 1)}, {sb, std::span(&b.back(), 1)}};
  const std::span<const float> last = together.step(step);
  for (int v = 0; v < V; ++v) {
    ASSERT_NEAR(last[v], logits_a[V * (a.size() - 1) + v], 1e-5) << "sequence a, vocab " << v;
    ASSERT_NEAR(last[V + v], logits_b[V * (b.size() - 1) + v], 1e-5) << "sequence b, vocab " << v;
  }
}

// Two sequences decoded a token at a time, in turn, take KV blocks in turn: each one's keys are runs of a block's
// slots with the other's blocks between them. Their logits equal those of each decoded alone (one run of slots),
// bit for bit, with either cache type.
TEST(ReferenceForward, SequencesWithInterleavedKvBlocksEqualEachAlone) {
  const Shape shape;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 5);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  std::vector<int32_t> a(40), b(40);
  for (int i = 0; i < 40; ++i) {
    a[i] = (7 * i + 1) % V;
    b[i] = (11 * i + 3) % V;
  }
  for (KvFormat kv_format : {KvFormat::F32, KvFormat::F16}) {
    engine::EngineOptions options = f32_cache_options();
    options.n_ctx = 128;
    options.kv_format = kv_format;
    auto decode_alone = [&](const std::vector<int32_t>& tokens) {
      engine::Engine eng(file, options);
      const int32_t seq = eng.new_sequence();
      std::vector<float> logits;
      for (int32_t t : tokens) {
        const std::span<const float> l = eng.eval(seq, std::span<const int32_t>(&t, 1));
        logits.assign(l.begin(), l.end());
      }
      return logits;
    };
    const std::vector<float> alone_a = decode_alone(a), alone_b = decode_alone(b);
    engine::Engine eng(file, options);
    const int32_t sa = eng.new_sequence(), sb = eng.new_sequence();
    std::vector<float> turn_a, turn_b;
    for (size_t i = 0; i < a.size(); ++i) {
      std::span<const float> l = eng.eval(sa, std::span<const int32_t>(&a[i], 1));
      turn_a.assign(l.begin(), l.end());
      l = eng.eval(sb, std::span<const int32_t>(&b[i], 1));
      turn_b.assign(l.begin(), l.end());
    }
    ASSERT_EQ(turn_a.size(), static_cast<size_t>(V));
    for (int v = 0; v < V; ++v) {
      ASSERT_EQ(turn_a[v], alone_a[v]) << "sequence a, vocab " << v << ", f16 cache " << (kv_format == KvFormat::F16);
      ASSERT_EQ(turn_b[v], alone_b[v]) << "sequence b, vocab " << v << ", f16 cache " << (kv_format == KvFormat::F16);
    }
  }
}

}  // namespace
}  // namespace tessera
