// CPU attention on one thread, in the shape the forward pass calls it for TinyLlama: one KV head, its 8 query heads
// (head_dim 64), a block of 32 prompt tokens whose last one sees n_keys keys, f16 rounding on (f16 cache). "attend"
// is the per-row reference; "block/<level>" is attend_block at each SIMD level the CPU has. GFMA/s counts the two
// products (q.k and the weighted values) over the keys each row sees.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/ops.h"
#include "quant/quant.h"

namespace {

namespace cpu = tessera::cpu;
namespace quant = tessera::quant;

constexpr int kHeadDim = 64, kHeads = 8, kTokens = 32;

struct Problem {
  std::vector<float> q, keys, values, out, scratch;
  std::vector<int32_t> n_keys;
  cpu::AttentionBlock block;
  double fma_per_call = 0;
};

Problem make_problem(int last_keys) {
  Problem p;
  std::mt19937 rng(3);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  p.q.resize(kTokens * kHeads * kHeadDim);
  p.keys.resize(static_cast<size_t>(last_keys) * kHeadDim);
  p.values.resize(p.keys.size());
  for (std::vector<float>* v : {&p.q, &p.keys, &p.values}) {
    for (float& x : *v) x = cpu::round_to_f16(gauss(rng));
  }
  p.out.resize(p.q.size());
  for (int t = 0; t < kTokens; ++t) {
    p.n_keys.push_back(last_keys - kTokens + 1 + t);
    p.fma_per_call += 2.0 * kHeads * p.n_keys.back() * kHeadDim;
  }
  p.scratch.resize(cpu::attend_block_scratch_floats(last_keys, kHeadDim));
  p.block = {p.q.data(), p.out.data(), kHeads * kHeadDim, kTokens,  kHeads, p.n_keys.data(), p.keys.data(),
             p.values.data(), kHeadDim, kHeadDim, 1.0f / std::sqrt(static_cast<float>(kHeadDim)), true};
  return p;
}

void report(benchmark::State& state, const Problem& p) {
  state.counters["GFMA/s"] = benchmark::Counter(p.fma_per_call * static_cast<double>(state.iterations()) * 1e-9,
                                                benchmark::Counter::kIsRate);
}

void BM_Attend(benchmark::State& state, int last_keys) {
  Problem p = make_problem(last_keys);
  const cpu::AttentionBlock& b = p.block;
  for (auto _ : state) {
    for (int t = 0; t < kTokens; ++t) {
      for (int g = 0; g < kHeads; ++g) {
        const int64_t at = t * b.token_stride + g * kHeadDim;
        cpu::attend(b.q + at, b.keys, b.values, b.kv_stride, b.n_keys[t], kHeadDim, b.scale, b.f16_rounding,
                    p.scratch.data(), b.out + at);
      }
    }
    benchmark::DoNotOptimize(p.out.data());
    benchmark::ClobberMemory();
  }
  report(state, p);
}

void BM_AttendBlock(benchmark::State& state, quant::SimdLevel level, int last_keys) {
  Problem p = make_problem(last_keys);
  for (auto _ : state) {
    cpu::attend_block_at(level, p.block, p.scratch.data());
    benchmark::DoNotOptimize(p.out.data());
    benchmark::ClobberMemory();
  }
  report(state, p);
}

void register_all() {
  for (int last_keys : {128, 512, 2048}) {
    const std::string keys = std::to_string(last_keys);
    benchmark::RegisterBenchmark(("attend/" + keys).c_str(), BM_Attend, last_keys)->Unit(benchmark::kMicrosecond);
    for (quant::SimdLevel level : {quant::SimdLevel::Avx2, quant::SimdLevel::Avx512Vnni}) {
      if (static_cast<int>(level) > static_cast<int>(quant::active_simd_level())) continue;
      const std::string name = "block/" + std::string(quant::simd_level_name(level)) + "/" + keys;
      benchmark::RegisterBenchmark(name.c_str(), BM_AttendBlock, level, last_keys)->Unit(benchmark::kMicrosecond);
    }
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
