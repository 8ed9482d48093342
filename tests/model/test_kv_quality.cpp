// What the KV cache formats cost in quality, on every fixture model and on stories260K: each format's logits against
// those of an f32 cache over the golden prompt and 200 greedy tokens (teacher-forced, so every position compares the
// same context), how many of the 200 greedy tokens it keeps, and beside it the error an independent f64 simulation of
// the same rounding gives (model::reference_logits with the format's model::KvRounding). Prints the table
// docs/notes/2026-12-05-kv-cache-quantization.md holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "common/op_harness.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "model/llama.h"
#include "model/llama_reference.h"

namespace tessera {
namespace {

constexpr int kGreedySteps = 200;

nlohmann::json golden_of(const std::string& base) {
  std::ifstream in(test::fixture(base + ".golden.json"));
  return nlohmann::json::parse(in);
}

engine::EngineOptions options_for(KvFormat format) {
  engine::EngineOptions o;
  o.n_threads = 2;
  o.n_ctx = 512;
  o.kv_format = format;
  return o;
}

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// kGreedySteps tokens, one at a time, from the prompt.
std::vector<int32_t> greedy(const gguf::File& file, KvFormat format, const std::vector<int32_t>& prompt) {
  engine::Engine eng(file, options_for(format));
  const int32_t seq = eng.new_sequence();
  std::span<const float> logits = eng.eval(seq, prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < kGreedySteps; ++i) {
    out.push_back(argmax(logits));
    logits = eng.eval(seq, std::span(&out.back(), 1));
  }
  return out;
}

// Every position's logits of `tokens` in one sequence, [n][n_vocab].
std::vector<float> all_logits(const gguf::File& file, KvFormat format, const std::vector<int32_t>& tokens) {
  engine::Engine eng(file, options_for(format));
  const std::span<const float> l = eng.eval(eng.new_sequence(), tokens, true);
  return std::vector<float>(l.begin(), l.end());
}

struct Error {
  double mean = 0;  // mean over positions of the mean |difference| over the vocabulary
  double max = 0;   // the largest |difference|
};

template <class A, class B>
Error error_of(const A& got, const B& want, size_t n_positions, int n_vocab) {
  Error e;
  for (size_t p = 0; p < n_positions; ++p) {
    double sum = 0;
    for (int v = 0; v < n_vocab; ++v) {
      const double d = std::abs(static_cast<double>(got(p, v)) - static_cast<double>(want(p, v)));
      sum += d;
      e.max = std::max(e.max, d);
    }
    e.mean += sum / n_vocab / static_cast<double>(n_positions);
  }
  return e;
}

size_t leading_agreement(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  return static_cast<size_t>(std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin());
}

struct Row {
  std::string model;
  KvFormat format;
  Error engine;
  size_t agree;      // leading greedy tokens equal to the f32 cache's
  Error simulation;  // f64 with this format's rounding against f64 without
};

// Runs one model: the engine per format against its f32 cache, the f64 simulation per format against exact f64
// over the prompt and the first `simulated` greedy positions (the simulation is slow on the 32000-token vocabulary).
std::vector<Row> measure(const std::string& name, const std::string& base, size_t simulated) {
  const gguf::File file = gguf::File::open(test::fixture(base + ".gguf").string());
  const nlohmann::json golden = golden_of(base);
  const std::vector<int32_t> prompt = golden["prompt_tokens"].get<std::vector<int32_t>>();
  const model::LlamaModel model = model::LlamaModel::load(file);
  const int V = model.config.n_vocab;

  const std::vector<int32_t> reference_greedy = greedy(file, KvFormat::F32, prompt);
  std::vector<int32_t> tokens = prompt;
  tokens.insert(tokens.end(), reference_greedy.begin(), reference_greedy.end() - 1);
  const std::vector<float> f32 = all_logits(file, KvFormat::F32, tokens);

  const std::vector<int32_t> simulated_tokens(tokens.begin(),
                                              tokens.begin() + std::min(tokens.size(), prompt.size() + simulated));
  const std::vector<double> exact =
      model::reference_logits(model, simulated_tokens, {.kv_rounding = test::kv_rounding(KvFormat::F32)});

  std::vector<Row> rows;
  for (const KvFormat format : {KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0, KvFormat::Q4_0}) {
    Row row{name, format, {}, 0, {}};
    const std::vector<float> got = all_logits(file, format, tokens);
    row.engine = error_of([&](size_t p, int v) { return got[p * V + v]; },
                          [&](size_t p, int v) { return f32[p * V + v]; }, tokens.size(), V);
    row.agree = leading_agreement(greedy(file, format, prompt), reference_greedy);
    const std::vector<double> sim =
        model::reference_logits(model, simulated_tokens, {.kv_rounding = test::kv_rounding(format)});
    row.simulation = error_of([&](size_t p, int v) { return sim[p * V + v]; },
                              [&](size_t p, int v) { return exact[p * V + v]; }, simulated_tokens.size(), V);
    rows.push_back(row);
  }
  return rows;
}

void print(const std::vector<Row>& rows) {
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.2e | %.2e | %zu/%d | %.2e | %.2e |\n", r.model.c_str(),
                std::string(kv_format_name(r.format)).c_str(), r.engine.mean, r.engine.max, r.agree, kGreedySteps,
                r.simulation.mean, r.simulation.max);
  }
  std::fflush(stdout);
}

// The engine's error follows the simulation's (same rounding, independent arithmetic): of the same order, and the
// formats in the same order (f16 under q8_0 under q4_0). With quantized weights the engine also quantizes its
// activations, which turns any change in attention into a change of whole activation quanta: whatever the cache
// format, its logits move by a floor of about the f16 cache's error, which the f64 simulation does not have.
void expect_like_the_simulation(const std::vector<Row>& rows, bool quantized_activations) {
  const double floor = quantized_activations ? rows[0].engine.mean : 0.0;
  for (const Row& r : rows) {
    const std::string what = r.model + " " + std::string(kv_format_name(r.format));
    EXPECT_LE(r.engine.mean, 4 * r.simulation.mean + 2 * floor + 1e-5) << what;
    EXPECT_GE(r.engine.mean, r.simulation.mean / 4) << what;
  }
  EXPECT_LT(rows[2].engine.mean, rows[3].engine.mean) << rows[0].model << ": q8_0 under q4_0";
  EXPECT_LT(rows[0].engine.mean, rows[2].engine.mean) << rows[0].model << ": f16 under q8_0";
}

class KvQuality : public ::testing::TestWithParam<const char*> {};

TEST_P(KvQuality, FixtureErrorsFollowTheSimulation) {
  const std::string name = GetParam();
  const bool big_vocab = name.find("v32k") != std::string::npos;
  const std::vector<Row> rows = measure(name, "models/" + name, big_vocab ? 16 : kGreedySteps);
  print(rows);
  expect_like_the_simulation(rows, name != "tiny-llama-F32" && name != "tiny-llama-F16");
  // q8_0 keeps these models' logits within the fixtures' tolerance for quantized models (fixtures/README.md).
  EXPECT_LE(rows[2].engine.max, 0.05) << name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KvQuality,
                         ::testing::Values("tiny-llama-F32", "tiny-llama-F16", "tiny-llama-Q8_0", "tiny-llama-Q6_K",
                                           "tiny-llama-Q5_K_M", "tiny-llama-Q5_1", "tiny-llama-Q5_0",
                                           "tiny-llama-Q4_K_M", "tiny-llama-Q4_1", "tiny-llama-Q4_0",
                                           "tiny-llama-Q3_K_M", "tiny-llama-Q2_K", "tiny-llama-v32k-Q4_K_M"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// stories260K, a trained model (head dim 8: q8_0 blocks span four heads). Its keys have one outlier channel per
// head, so 8 bits per block of 32 leave the other channels a coarse step (the f64 simulation of the rounding moves
// the logits as much), and the greedy text keeps the golden's through the near-tie at step 67 (gap 0.049) and up to
// the one at step 110 (gap 0.039), not to the one at step 181 (docs/notes/2026-12-05-kv-cache-quantization.md).
// Values alone in q8_0 (keys f16) keep it past step 181.
TEST(KvQuality, Stories260KGreedyTextWithQuantizedCaches) {
  const std::vector<Row> rows = measure("stories260K", "trained/stories260K", kGreedySteps);
  print(rows);
  expect_like_the_simulation(rows, false);
  const gguf::File file = gguf::File::open(test::fixture("trained/stories260K.gguf").string());
  const nlohmann::json golden = golden_of("trained/stories260K");
  const std::vector<int32_t> prompt = golden["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = golden["greedy_tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> f16 = greedy(file, KvFormat::F16, prompt), q8 = greedy(file, KvFormat::Q8_0, prompt);
  EXPECT_GE(leading_agreement(f16, want), 181u);
  EXPECT_EQ(leading_agreement(q8, want), 110u);
  engine::EngineOptions o = options_for(KvFormat::F16);
  o.kv_format.v = KvFormat::Q8_0;
  engine::Engine eng(file, o);
  const int32_t seq = eng.new_sequence();
  std::span<const float> logits = eng.eval(seq, prompt);
  std::vector<int32_t> q8_values;
  for (int i = 0; i < kGreedySteps; ++i) {
    q8_values.push_back(argmax(logits));
    logits = eng.eval(seq, std::span(&q8_values.back(), 1));
  }
  EXPECT_GE(leading_agreement(q8_values, want), 181u);
}

}  // namespace
}  // namespace tessera
