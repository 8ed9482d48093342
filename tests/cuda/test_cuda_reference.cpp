// The CUDA and hybrid backends' whole forward pass against model::LlamaReference (tests/common/op_harness.h):
// every fixture model, f32 and f16 KV caches, the prompt in one step and token by token.
#include <algorithm>
#include <string>
#include <vector>

#include "common/golden.h"
#include "common/op_harness.h"
#include "cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using tessera::test::Tolerance;
using tessera::test::WeightCase;

// The GPU's sums run in other orders than the CPU's, its flash prompt attention rounds the query and the softmax
// weights to f16 for the tensor cores (with an f16 cache, as the reference's rounding does), and for F16 and
// quantized weights it converts activations as llama.cpp does. So: F32 weights within float rounding with an f32
// cache and within the fixtures README's F32 golden tolerance with an f16 one; F16 and quantized weights within
// the README's suggested tolerances (2e-3, 0.05), which the CPU backend meets against the reference too.
class CudaForwardGrid : public ::testing::TestWithParam<WeightCase> {};

TEST_P(CudaForwardGrid, MatchesReference) {
  TESSERA_REQUIRE_GPU();
  const WeightCase& c = GetParam();
  const std::string stem = "models/tiny-llama-" + c.name;
  const tessera::test::LoadedModel m(tessera::test::fixture(stem + ".gguf"));
  const std::vector<int32_t> prompt =
      tessera::test::read_json(tessera::test::fixture(stem + ".golden.json"))["prompt_tokens"];
  const int n_cells = tessera::test::check_forward_grid({{c.name, &m.model, prompt, 0, 0, c.f32_cache, c.f16_cache}},
                                                        {"cuda", "hybrid"});
  EXPECT_EQ(n_cells, 4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaForwardGrid,
                         ::testing::Values(WeightCase{"F32", {1e-4}, {1e-3}}, WeightCase{"F16", {2e-3}, {2e-3}},
                                           WeightCase{"Q8_0", {0.05}, {0.05}}, WeightCase{"Q6_K", {0.05}, {0.05}},
                                           WeightCase{"Q5_K_M", {0.05}, {0.05}}, WeightCase{"Q5_1", {0.05}, {0.05}},
                                           WeightCase{"Q5_0", {0.05}, {0.05}}, WeightCase{"Q4_K_M", {0.05}, {0.05}},
                                           WeightCase{"Q4_1", {0.05}, {0.05}}, WeightCase{"Q4_0", {0.05}, {0.05}},
                                           WeightCase{"Q3_K_M", {0.05}, {0.05}}, WeightCase{"Q2_K", {0.05}, {0.05}},
                                           WeightCase{"v32k-Q4_K_M", {0.05}, {0.05}}),
                         tessera::test::weight_case_test_name);

}  // namespace
}  // namespace tessera::cuda
