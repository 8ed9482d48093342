// Throughput of the CUDA backend on random-weight Llama shapes at a Q4_K_M-like type mix (Q4_K, with Q6_K for
// the output, and for attn_v / ffn_down in every other layer): pp512 (one 512-token prompt step) and tg128 (128
// single-token decode steps from an empty cache, logits copied back each step), as llama-bench counts them.
// Run: ./build/bench/cuda_bench   (needs a GPU built with TESSERA_CUDA; prints "tokens_per_s" counters)
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/step_plan.h"
#include "model/llama.h"
#include "quant/quant.h"

namespace {

using tessera::GgmlType;
using tessera::model::MatrixView;

struct Shape {
  const char* name;
  int n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff;
};
constexpr Shape kTinyLlama{"tinyllama-1.1b", 32000, 2048, 22, 32, 4, 5632};
constexpr Shape kLlama2_7B{"llama2-7b", 32000, 4096, 32, 32, 32, 11008};

// Random blocks with small, fixed scales: every bit pattern of the quants is valid.
class RandomModel {
 public:
  explicit RandomModel(const Shape& s) {
    tessera::model::LlamaConfig& c = model.config;
    c.n_vocab = s.n_vocab, c.n_embd = s.n_embd, c.n_layer = s.n_layer, c.n_head = s.n_head;
    c.n_head_kv = s.n_head_kv, c.head_dim = s.n_embd / s.n_head, c.n_ff = s.n_ff, c.n_ctx_train = 4096;
    c.rope.n_dims = c.head_dim;
    norm_.assign(s.n_embd, 1.0f);
    model.token_embd = matrix("token_embd", GgmlType::Q4_K, s.n_vocab, s.n_embd);
    model.output = matrix("output", GgmlType::Q6_K, s.n_vocab, s.n_embd);
    model.output_norm = norm_.data();
    for (int il = 0; il < s.n_layer; ++il) {
      tessera::model::LlamaLayer l;
      const GgmlType high = il % 2 == 0 ? GgmlType::Q6_K : GgmlType::Q4_K;
      l.attn_norm = l.ffn_norm = norm_.data();
      l.wq = matrix("wq", GgmlType::Q4_K, c.q_dim(), s.n_embd);
      l.wk = matrix("wk", GgmlType::Q4_K, c.kv_dim(), s.n_embd);
      l.wv = matrix("wv", high, c.kv_dim(), s.n_embd);
      l.wo = matrix("wo", GgmlType::Q4_K, s.n_embd, c.q_dim());
      l.w_gate = matrix("w_gate", GgmlType::Q4_K, s.n_ff, s.n_embd);
      l.w_up = matrix("w_up", GgmlType::Q4_K, s.n_ff, s.n_embd);
      l.w_down = matrix("w_down", high, s.n_embd, s.n_ff);
      model.layers.push_back(l);
    }
  }
  tessera::model::LlamaModel model;

 private:
  MatrixView matrix(const std::string& name, GgmlType type, int64_t rows, int64_t cols) {
    MatrixView m;
    m.name = name, m.type = type, m.n_rows = rows, m.n_cols = cols;
    m.row_bytes = tessera::ggml_row_bytes(type, cols);
    auto& bytes = storage_.emplace_back(std::make_unique<uint8_t[]>(m.bytes()));
    uint64_t state = 0x9E3779B97F4A7C15ull ^ storage_.size();
    for (size_t i = 0; i + 8 <= m.bytes(); i += 8) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      std::memcpy(bytes.get() + i, &state, 8);
    }
    const size_t block = type == GgmlType::Q4_K ? 144 : 210;
    const uint16_t d = tessera::quant::fp32_to_fp16(0.0005f);
    for (size_t b = 0; b < m.bytes() / block; ++b) {
      uint8_t* p = bytes.get() + b * block;
      if (type == GgmlType::Q4_K) {
        std::memcpy(p, &d, 2);
        std::memcpy(p + 2, &d, 2);
      } else {
        std::memcpy(p + 208, &d, 2);
      }
    }
    m.data = bytes.get();
    return m;
  }
  std::vector<float> norm_;
  std::vector<std::unique_ptr<uint8_t[]>> storage_;
};

constexpr int kKvBlock = 16;
constexpr int kKvSlots = 1024;

// One step of `tokens` at positions first_pos.. of one sequence whose KV blocks are 0, 1, 2, ...
double forward_seconds(tessera::Backend& backend, int32_t n_vocab, const std::vector<int32_t>& tokens,
                       int32_t first_pos, const std::vector<int32_t>& blocks, std::vector<float>& logits) {
  tessera::StepPlanBuilder builder(n_vocab, kKvBlock, kKvSlots);
  builder.add_run(tokens, first_pos, blocks, tessera::LogitsWanted::Last);
  const auto t0 = std::chrono::steady_clock::now();
  backend.forward({}, builder.plan(), logits.data());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void run(benchmark::State& state, const Shape& shape, bool prompt) {
  static std::unique_ptr<RandomModel> model;
  static std::string built;  // consecutive benchmarks of one shape share its model
  if (built != shape.name) {
    model.reset();
    model = std::make_unique<RandomModel>(shape);
    built = shape.name;
  }
  tessera::BackendOptions options;
  options.n_kv_slots = kKvSlots;
  options.kv_block_size = kKvBlock;
  std::unique_ptr<tessera::Backend> backend;
  try {
    backend = tessera::BackendRegistry::instance().find("cuda")->create(model->model, options);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  std::vector<int32_t> blocks(kKvSlots / kKvBlock);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::vector<float> logits(shape.n_vocab);
  std::mt19937 rng(1);
  std::vector<int32_t> tokens(512);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % shape.n_vocab);
  auto once = [&]() {
    if (prompt) return forward_seconds(*backend, shape.n_vocab, tokens, 0, blocks, logits);
    double total = 0;
    for (int i = 0; i < 128; ++i) total += forward_seconds(*backend, shape.n_vocab, {tokens[i]}, i, blocks, logits);
    return total;
  };
  once();  // warm-up: cuBLAS heuristics, graph capture
  double seconds = 0;
  int64_t runs = 0;
  for (auto _ : state) {
    const double s = once();
    state.SetIterationTime(s);
    seconds += s;
    ++runs;
  }
  const double tokens_per_run = prompt ? 512 : 128;
  state.counters["tokens_per_s"] = tokens_per_run * static_cast<double>(runs) / seconds;
  state.SetLabel(std::string(shape.name) + (prompt ? " pp512" : " tg128"));
}

BENCHMARK_CAPTURE(run, tinyllama_pp512, kTinyLlama, true)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(run, tinyllama_tg128, kTinyLlama, false)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);
BENCHMARK_CAPTURE(run, llama2_7b_pp512, kLlama2_7B, true)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(run, llama2_7b_tg128, kLlama2_7B, false)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
