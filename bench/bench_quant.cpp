// Weight throughput of quant::gemm per type on one thread: decode (1 token: streams each weight row once, so
// memory-bound; the matrix is larger than the L3 cache) and prompt (64 tokens: compute-bound, weights reused).
// bytes_per_second counts weight bytes read per call; the prompt rows also report tokens/s for one matrix.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "quant/quant.h"

namespace {

using tessera::GgmlType;
namespace quant = tessera::quant;

struct Problem {
  std::vector<uint8_t> weights;
  std::vector<uint8_t> xq;
  size_t row_bytes = 0;
  size_t xq_row_bytes = 0;
  std::vector<float> y;
};

Problem make_problem(GgmlType type, int64_t n_cols, int64_t n_rows, int64_t n_tokens) {
  Problem p;
  std::mt19937 rng(7);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  p.row_bytes = tessera::ggml_row_bytes(type, n_cols);
  p.weights.resize(p.row_bytes * n_rows);
  std::vector<float> row(n_cols);
  // Quantize a few distinct rows and tile them: the kernels' speed does not depend on the values.
  constexpr int64_t kDistinct = 64;
  for (int64_t r = 0; r < n_rows; ++r) {
    if (r < kDistinct) {
      for (float& v : row) v = gauss(rng) * 0.02f;
      quant::quantize_row(type, row.data(), p.weights.data() + r * p.row_bytes, n_cols);
    } else {
      std::copy_n(p.weights.data() + (r % kDistinct) * p.row_bytes, p.row_bytes, p.weights.data() + r * p.row_bytes);
    }
  }
  p.xq_row_bytes = quant::activation_row_bytes(type, n_cols);
  p.xq.resize(p.xq_row_bytes * n_tokens);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (float& v : row) v = gauss(rng);
    quant::quantize_activations(type, row.data(), p.xq.data() + t * p.xq_row_bytes, n_cols);
  }
  p.y.resize(n_rows * n_tokens);
  return p;
}

void BM_Gemm(benchmark::State& state, GgmlType type, int64_t n_cols, int64_t n_rows, int64_t n_tokens) {
  Problem p = make_problem(type, n_cols, n_rows, n_tokens);
  for (auto _ : state) {
    quant::gemm(type, p.weights.data(), p.row_bytes, n_cols, 0, n_rows, p.xq.data(), p.xq_row_bytes, n_tokens,
                p.y.data(), n_rows);
    benchmark::DoNotOptimize(p.y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(p.weights.size()));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(n_tokens) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(quant::simd_level_name(quant::active_simd_level())));
}

void register_all() {
  const GgmlType types[] = {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                            GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q5_K,
                            GgmlType::F16,  GgmlType::BF16, GgmlType::F32};
  for (GgmlType type : types) {
    const std::string name(tessera::ggml_type_name(type));
    // Decode: 4096 x 8192 weights (Q4_K: 18 MiB; F32: 128 MiB), one token.
    benchmark::RegisterBenchmark(("decode/" + name).c_str(), BM_Gemm, type, 4096, 8192, 1)->Unit(benchmark::kMillisecond);
    // Prompt: 2048 x 2048 weights (TinyLlama's attention matrices), 64 tokens.
    benchmark::RegisterBenchmark(("prompt64/" + name).c_str(), BM_Gemm, type, 2048, 2048, 64)->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
