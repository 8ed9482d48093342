// `tessera bench --parallel`: the throughput of several sequences served together, measured as llama.cpp's
// llama-batched-bench does. N sequences each get a P-token prompt (all prompts packed into as few forward calls as
// the batch size allows), then generate n tokens each, one token per sequence per forward call.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/engine.h"

namespace tessera::cli {

struct ParallelTest {
  int n_sequences = 1;         // N
  int n_prompt = 0;            // P, per sequence
  int n_gen = 0;               // n, per sequence
  bool shared_prompt = false;  // one prompt evaluated once; the other sequences fork its KV blocks
};

// What every bench test shares: n token ids drawn uniformly from the vocabulary, and a stopwatch.
std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int n_vocab);
double seconds_since(std::chrono::steady_clock::time_point start);

// One timed repetition.
struct ParallelSample {
  double pp_seconds = 0;
  double tg_seconds = 0;
};

// Prompt tokens evaluated (shared: one prompt's), tokens generated, and KV cache slots the sequences hold at the
// end (shared: the prompt once).
int64_t parallel_pp_tokens(const ParallelTest& test);
int64_t parallel_tg_tokens(const ParallelTest& test);
int64_t parallel_kv_tokens(const ParallelTest& test);

// KV cache slots an engine needs to run the test: every sequence's blocks, whole (a shared prompt's last, partly
// filled block is copied into each fork).
int64_t parallel_kv_slots_needed(const ParallelTest& test, int32_t block_size);

// Runs the test once on `engine` (whose cache holds no other sequence) with random tokens from `rng`, freeing
// its sequences afterwards.
ParallelSample run_parallel(engine::Engine& engine, std::mt19937& rng, const ParallelTest& test);

}  // namespace tessera::cli
