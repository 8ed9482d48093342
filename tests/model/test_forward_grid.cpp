// The CPU backend's whole forward pass against model::LlamaReference (tests/common/op_harness.h): every fixture
// model, f32 and f16 KV caches, the prompt in one step and token by token, and sliding windows with sinks.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/golden.h"
#include "common/op_harness.h"

namespace tessera {
namespace {

using test::fixture;
using test::Tolerance;
using test::WeightCase;

// The backend computes in float and converts its activations to the weights' activation type (F16, Q8_0, Q8_1 or
// Q8_K) as llama.cpp does; the reference does neither. So, for F32 weights: float rounding with an f32 cache, and
// with an f16 cache about one f16 step (2^-11 of values near 1) where a key, value or softmax weight lands on the
// other side of an f16 rounding boundary in float than in double. For F16 and quantized weights: the gap the
// fixtures README measures between llama.cpp, which converts the same way, and an independent float64 forward
// (7.2e-4 for F16, up to 0.033 quantized), within its suggested tolerances (F16 2e-3, quantized 0.05).
class CpuForwardGrid : public ::testing::TestWithParam<WeightCase> {};

TEST_P(CpuForwardGrid, MatchesReference) {
  const WeightCase& c = GetParam();
  const std::string stem = "models/tiny-llama-" + c.name;
  const test::LoadedModel m(fixture(stem + ".gguf"));
  const std::vector<int32_t> prompt = test::read_json(fixture(stem + ".golden.json"))["prompt_tokens"];
  const int n_cells = test::check_forward_grid({{c.name, &m.model, prompt, 0, 0, c.f32_cache, c.f16_cache}}, {"cpu"});
  EXPECT_EQ(n_cells, 2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CpuForwardGrid,
                         ::testing::Values(WeightCase{"F32", {1e-5}, {5e-4}}, WeightCase{"F16", {1e-3}, {1e-3}},
                                           WeightCase{"Q8_0", {0.05}, {0.05}}, WeightCase{"Q6_K", {0.05}, {0.05}},
                                           WeightCase{"Q5_K_M", {0.05}, {0.05}}, WeightCase{"Q5_1", {0.05}, {0.05}},
                                           WeightCase{"Q5_0", {0.05}, {0.05}}, WeightCase{"Q4_K_M", {0.05}, {0.05}},
                                           WeightCase{"Q4_1", {0.05}, {0.05}}, WeightCase{"Q4_0", {0.05}, {0.05}},
                                           WeightCase{"Q3_K_M", {0.05}, {0.05}}, WeightCase{"Q2_K", {0.05}, {0.05}},
                                           WeightCase{"v32k-Q4_K_M", {0.05}, {0.05}}),
                         test::weight_case_test_name);

// Sliding windows over 40 tokens (three KV blocks): shorter than a block, across blocks, with sinks inside the
// window's first block and past it, and a window longer than the sequence (every key visible).
TEST(CpuForwardGrid, SlidingWindowsMatchReference) {
  const test::LoadedModel m(fixture("models/tiny-llama-F32.gguf"));
  std::vector<int32_t> tokens(40);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((37 * i + 1) % 512);
  std::vector<test::ForwardShape> shapes;
  for (const auto& [window, n_sink] : {std::pair{5, 0}, {7, 3}, {20, 4}, {9, 18}, {64, 2}}) {
    shapes.push_back({"window " + std::to_string(window) + ", " + std::to_string(n_sink) + " sinks",
                      &m.model,
                      tokens,
                      window,
                      n_sink,
                      {1e-5},
                      {5e-4}});
  }
  EXPECT_EQ(test::check_forward_grid(shapes, {"cpu"}), 10);
}

}  // namespace
}  // namespace tessera
