// End to end: a model quantized by Tessera, run by Tessera's CPU engine, is as close to the F32 golden logits
// as the llama.cpp-made fixture of the same type is under llama.cpp (issue 3: mean within 1.1x, max within 1.25x).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/golden.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/quantize_model.h"

namespace tessera::quant {
namespace {

struct Distance {
  double mean = 0;
  double max = 0;
};

Distance distance(const std::vector<float>& a, const std::vector<float>& b) {
  Distance d;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(a[i]) - b[i]);
    d.mean += diff;
    d.max = std::max(d.max, diff);
  }
  d.mean /= static_cast<double>(a.size());
  return d;
}

class LogitsQuality : public ::testing::TestWithParam<const char*> {};

TEST_P(LogitsQuality, NoWorseThanLlamaCppFixture) {
  const std::string preset = GetParam();
  const std::filesystem::path out = std::filesystem::temp_directory_path() /
                                    ("tessera-test-logits-" + std::to_string(::getpid()) + "-" + preset + ".gguf");
  quantize_model(test::fixture("models/tiny-llama-F32.gguf").string(), out.string(), parse_model_quant_type(preset), 2,
                 false);
  std::vector<float> ours;
  {
    const gguf::File file = gguf::File::open(out.string());
    engine::EngineOptions options;
    options.n_threads = 2;
    options.n_ctx = 64;
    engine::Engine engine(file, options);
    std::ifstream golden_json(test::fixture("models/tiny-llama-F32.golden.json"));
    const std::vector<int32_t> tokens = nlohmann::json::parse(golden_json).at("prompt_tokens").get<std::vector<int32_t>>();
    const std::span<const float> logits = engine.eval(engine.new_sequence(), tokens, true);
    ours.assign(logits.begin(), logits.end());
  }
  std::filesystem::remove(out);

  const std::vector<float> golden_f32 = test::read_f32(test::fixture("models/tiny-llama-F32.logits.f32"));
  const std::vector<float> llama_cpp = test::read_f32(test::fixture("models/tiny-llama-" + preset + ".logits.f32"));
  ASSERT_EQ(ours.size(), golden_f32.size());
  const Distance mine = distance(ours, golden_f32);
  const Distance theirs = distance(llama_cpp, golden_f32);
  std::printf("%-7s vs F32 golden: ours mean %.5f max %.4f; llama.cpp's fixture mean %.5f max %.4f\n", preset.c_str(),
              mine.mean, mine.max, theirs.mean, theirs.max);
  EXPECT_LE(mine.mean, 1.1 * theirs.mean);
  EXPECT_LE(mine.max, 1.25 * theirs.max);
}

INSTANTIATE_TEST_SUITE_P(Presets, LogitsQuality, ::testing::Values("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"));

}  // namespace
}  // namespace tessera::quant
