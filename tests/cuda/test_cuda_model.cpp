// The CUDA backend end to end on the fixtures: prompt logits against llama.cpp's goldens (one batch, and one token
// per step through the decode graph), stories260K's greedy text exactly, batches = each sequence alone, and the
// hybrid split.
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/step_plan.h"
#include "common/fixtures.h"
#include "cuda/cuda_test_util.h"
#include "gguf/gguf.h"
#include "model/llama.h"

namespace tessera::cuda {
namespace {

using test::expect_close;

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  in.seekg(0, std::ios::end);
  std::vector<float> v(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

constexpr int kBlock = 16;

std::unique_ptr<Backend> make_backend(const std::string& name, const model::LlamaModel& model,
                                      BackendOptions options) {
  options.kv_block_size = kBlock;
  const BackendEntry* entry = BackendRegistry::instance().find(name);
  if (!entry) throw std::runtime_error("no backend " + name);
  return entry->create(model, options);
}

// One sequence: the KV blocks of its positions, kBlock slots each.
struct Sequence {
  std::vector<int32_t> blocks;
};

// Runs tokens[s] of each sequence at positions [starts[s], ...) in one step, after the block copies.
std::vector<float> run(Backend& backend, int n_slots, const std::vector<const Sequence*>& seqs,
                       const std::vector<std::vector<int32_t>>& tokens, const std::vector<int32_t>& starts, int n_vocab,
                       bool all_logits, const std::vector<KvBlockCopy>& copies = {}) {
  StepPlanBuilder builder(n_vocab, kBlock, n_slots);
  for (size_t s = 0; s < seqs.size(); ++s) {
    builder.add_run(tokens[s], starts[s], seqs[s]->blocks, all_logits ? LogitsWanted::All : LogitsWanted::Last);
  }
  std::vector<float> logits(static_cast<size_t>(builder.plan().n_outputs()) * n_vocab);
  backend.forward(copies, builder.plan(), logits.data());
  return logits;
}

Sequence contiguous(int n_slots) {
  Sequence s;
  for (int b = 0; b < n_slots / kBlock; ++b) s.blocks.push_back(b);
  return s;
}

struct Fixture {
  const char* name;
  double tolerance;  // fixtures README: F32 1e-3, F16 2e-3, quantized 0.05
};

class CudaFixture : public ::testing::TestWithParam<Fixture> {};

TEST_P(CudaFixture, PromptLogitsMatchGoldens) {
  TESSERA_REQUIRE_GPU();
  const Fixture fx = GetParam();
  const std::string base = tessera::test::fixture(std::string("models/") + fx.name).string();
  const gguf::File file = gguf::File::open(base + ".gguf");
  const model::LlamaModel model = model::LlamaModel::load(file);
  const nlohmann::json golden = read_json(base + ".golden.json");
  const std::vector<int32_t> prompt = golden["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<float> want = read_floats(base + ".logits.f32");
  const int n_vocab = model.config.n_vocab;
  BackendOptions options;
  options.n_kv_slots = 512;

  // Whole prompt in one step: the tensor-core path.
  {
    auto backend = make_backend("cuda", model, options);
    const Sequence seq = contiguous(options.n_kv_slots);
    expect_close(run(*backend, options.n_kv_slots, {&seq}, {prompt}, {0}, n_vocab, true), want, fx.tolerance, 0,
                 std::string(fx.name) + " batched prompt");
  }
  // One token per step: the decode kernels, replayed graphs and the KV cache, with scattered blocks.
  {
    auto backend = make_backend("cuda", model, options);
    Sequence seq;
    for (int b = 0; b < 4; ++b) seq.blocks.push_back(31 - 7 * b);
    std::vector<float> got;
    for (size_t p = 0; p < prompt.size(); ++p) {
      const std::vector<float> row =
          run(*backend, options.n_kv_slots, {&seq}, {{prompt[p]}}, {static_cast<int32_t>(p)}, n_vocab, true);
      got.insert(got.end(), row.begin(), row.end());
    }
    expect_close(got, want, fx.tolerance, 0, std::string(fx.name) + " token by token");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaFixture,
                         ::testing::Values(Fixture{"tiny-llama-F32", 1e-3}, Fixture{"tiny-llama-F16", 2e-3},
                                           Fixture{"tiny-llama-Q8_0", 0.05}, Fixture{"tiny-llama-Q6_K", 0.05},
                                           Fixture{"tiny-llama-Q5_K_M", 0.05}, Fixture{"tiny-llama-Q5_1", 0.05},
                                           Fixture{"tiny-llama-Q5_0", 0.05}, Fixture{"tiny-llama-Q4_K_M", 0.05},
                                           Fixture{"tiny-llama-Q4_1", 0.05}, Fixture{"tiny-llama-Q4_0", 0.05},
                                           Fixture{"tiny-llama-Q3_K_M", 0.05}, Fixture{"tiny-llama-Q2_K", 0.05},
                                           Fixture{"tiny-llama-v32k-Q4_K_M", 0.05}),
                         [](const ::testing::TestParamInfo<Fixture>& info) {
                           std::string name = info.param.name;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

int argmax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

TEST(CudaModel, Stories260KGreedyMatchesReference) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("trained/stories260K.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  const nlohmann::json golden = read_json(tessera::test::fixture("trained/stories260K.golden.json").string());
  const std::vector<int32_t> prompt = golden["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = golden["greedy_tokens"].get<std::vector<int32_t>>();
  const int n_vocab = model.config.n_vocab;
  BackendOptions options;
  options.n_kv_slots = 256;
  auto backend = make_backend("cuda", model, options);
  const Sequence seq = contiguous(256);
  std::vector<float> logits = run(*backend, 256, {&seq}, {prompt}, {0}, n_vocab, true);
  expect_close(logits, read_floats(tessera::test::fixture("trained/stories260K.logits.f32").string()), 2e-2, 0,
               "stories260K prompt logits");
  std::vector<int32_t> got;
  int32_t next = argmax(logits.data() + (prompt.size() - 1) * n_vocab, n_vocab);
  for (size_t i = 0; i < want.size(); ++i) {
    got.push_back(next);
    logits = run(*backend, 256, {&seq}, {{next}}, {static_cast<int32_t>(prompt.size() + i)}, n_vocab, false);
    next = argmax(logits.data(), n_vocab);
  }
  EXPECT_EQ(got, want);
}

// Two sequences in one batch give the logits each gives alone, for a prompt step and for decode steps.
TEST(CudaModel, BatchOfTwoEqualsEachAlone) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q4_K_M.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  const int n_vocab = model.config.n_vocab;
  BackendOptions options;
  options.n_kv_slots = 128;
  const std::vector<int32_t> a = {1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414};
  const std::vector<int32_t> b = {1, 403, 407, 261, 378, 300, 301, 302, 303, 304, 305};
  Sequence sa, sb;  // interleaved blocks
  for (int i = 0; i < 4; ++i) {
    sa.blocks.push_back(2 * i + 1);
    sb.blocks.push_back(2 * i);
  }
  const int n = options.n_kv_slots;
  auto together = make_backend("cuda", model, options);
  auto alone_a = make_backend("cuda", model, options);
  auto alone_b = make_backend("cuda", model, options);
  std::vector<float> both = run(*together, n, {&sa, &sb}, {a, b}, {0, 0}, n_vocab, false);
  std::vector<float> la = run(*alone_a, n, {&sa}, {a}, {0}, n_vocab, false);
  std::vector<float> lb = run(*alone_b, n, {&sb}, {b}, {0}, n_vocab, false);
  la.insert(la.end(), lb.begin(), lb.end());
  expect_close(both, la, 1e-4, 0, "prompts");
  int32_t pa = static_cast<int32_t>(a.size()), pb = static_cast<int32_t>(b.size());
  for (int step = 0; step < 4; ++step) {
    const int32_t ta = 300 + step, tb = 400 + step;
    both = run(*together, n, {&sa, &sb}, {{ta}, {tb}}, {pa, pb}, n_vocab, false);
    la = run(*alone_a, n, {&sa}, {{ta}}, {pa}, n_vocab, false);
    lb = run(*alone_b, n, {&sb}, {{tb}}, {pb}, n_vocab, false);
    la.insert(la.end(), lb.begin(), lb.end());
    expect_close(both, la, 1e-4, 0, "decode step " + std::to_string(step));
    ++pa, ++pb;
  }
}

// Hybrid: one layer on the GPU, one on the CPU, still the golden logits, for the prompt in one step and token by
// token (the GPU layers' decode graph, then the CPU's layers).
TEST(CudaModel, HybridSplitMatchesGoldens) {
  TESSERA_REQUIRE_GPU();
  const std::string base = tessera::test::fixture("models/tiny-llama-Q8_0").string();
  const gguf::File file = gguf::File::open(base + ".gguf");
  const model::LlamaModel model = model::LlamaModel::load(file);
  const std::vector<int32_t> prompt = read_json(base + ".golden.json")["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<float> want = read_floats(base + ".logits.f32");
  for (int gpu_layers : {0, 1, 2}) {
    BackendOptions options;
    options.n_kv_slots = 64;
    options.n_threads = 2;
    options.gpu_layers = gpu_layers;
    auto backend = make_backend("hybrid", model, options);
    EXPECT_EQ(backend->name(), "hybrid");
    const Sequence seq = contiguous(64);
    std::vector<float> got = run(*backend, 64, {&seq}, {prompt}, {0}, model.config.n_vocab, true);
    expect_close(got, want, 0.05, 0, "hybrid with " + std::to_string(gpu_layers) + " GPU layers");

    auto decoding = make_backend("hybrid", model, options);
    const Sequence reversed{{3, 2, 1, 0}};
    std::vector<float> steps;
    for (size_t p = 0; p < prompt.size(); ++p) {
      const std::vector<float> row =
          run(*decoding, 64, {&reversed}, {{prompt[p]}}, {static_cast<int32_t>(p)}, model.config.n_vocab, true);
      steps.insert(steps.end(), row.begin(), row.end());
    }
    expect_close(steps, want, 0.05, 0, "hybrid token by token with " + std::to_string(gpu_layers) + " GPU layers");
  }
}

// A sequence that shares another's full blocks and continues in a copy of its partly filled block (the prefix
// cache's copy on write) gets the logits the original gets, on the GPU alone and split with the CPU.
TEST(CudaModel, CopiedBlockContinuesLikeTheOriginal) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q8_0.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  const int n_vocab = model.config.n_vocab;
  const std::vector<int32_t> prompt = {1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414, 444, 410, 449,
                                       425, 423, 427, 419};  // 20 tokens: one full block and 4 in the second
  for (const char* name : {"cuda", "hybrid"}) {
    BackendOptions options;
    options.n_kv_slots = 64;
    options.n_threads = 2;
    options.gpu_layers = 1;
    auto original = make_backend(name, model, options);
    auto shared = make_backend(name, model, options);
    const Sequence a{{0, 1}}, b{{0, 2}};
    run(*original, 64, {&a}, {prompt}, {0}, n_vocab, false);
    run(*shared, 64, {&a}, {prompt}, {0}, n_vocab, false);
    const std::vector<float> want = run(*original, 64, {&a}, {{300}}, {20}, n_vocab, false);
    const std::vector<float> got = run(*shared, 64, {&b}, {{300}}, {20}, n_vocab, false, {{1, 2}});
    expect_close(got, want, 1e-6, 0, std::string(name) + ": decoding on from a copied block");
  }
}

// Two sequences that share a prefix's full block, each with its own copy of the partly filled one, decode together
// in one step (both read block 0; the decode kernel must tell them apart): each gets the logits it gets alone.
TEST(CudaModel, SequencesSharingPrefixBlocksDecodeTogether) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q8_0.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  const int n_vocab = model.config.n_vocab;
  const std::vector<int32_t> prompt = {1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414, 444, 410, 449,
                                       425, 423, 427, 419};
  BackendOptions options;
  options.n_kv_slots = 64;
  const Sequence a{{0, 1}}, b{{0, 2}};
  auto alone = [&](int32_t token) {
    auto backend = make_backend("cuda", model, options);
    run(*backend, 64, {&a}, {prompt}, {0}, n_vocab, false);
    return run(*backend, 64, {&a}, {{token}}, {20}, n_vocab, false);
  };
  auto together = make_backend("cuda", model, options);
  run(*together, 64, {&a}, {prompt}, {0}, n_vocab, false);
  std::vector<float> both = run(*together, 64, {&a, &b}, {{300}, {301}}, {20, 20}, n_vocab, false, {{1, 2}});
  std::vector<float> want = alone(300);
  const std::vector<float> want_b = alone(301);
  want.insert(want.end(), want_b.begin(), want_b.end());
  expect_close(both, want, 1e-4, 0, "two sequences on shared blocks in one decode step");
}

TEST(CudaModel, TooLittleMemoryIsAClearError) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q4_0.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  BackendOptions options;
  options.n_kv_slots = 1 << 30;  // a KV cache of about 2 TiB
  try {
    make_backend("cuda", model, options);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not enough GPU memory"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("MiB"), std::string::npos) << e.what();
  }
}

TEST(CudaModel, NoGpuIsAClearError) {
  if (test::gpu_unavailable_reason().empty()) GTEST_SKIP() << "a GPU is present; this checks the message without one";
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q4_0.gguf").string());
  const model::LlamaModel model = model::LlamaModel::load(file);
  BackendOptions options;
  options.n_kv_slots = 64;
  try {
    make_backend("cuda", model, options);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA GPU"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::cuda
