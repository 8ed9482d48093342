#include "cli/bench_parallel.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "engine/sampler.h"

namespace tessera::cli {

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int n_vocab) {
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

namespace {

// The prompts of `seqs` (prompts[i] for seqs[i]) in steps of at most n_batch tokens: each step takes what is left
// of one prompt after another, so a prompt may be split between two steps. Returns the last step's logits.
std::span<const float> evaluate_prompts(engine::Engine& engine, std::span<const int32_t> seqs,
                                        const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<engine::Engine::Chunk> chunks;
  std::span<const float> logits;
  size_t seq = 0, done = 0;  // the next prompt and how many of its tokens earlier steps took
  while (seq < seqs.size()) {
    chunks.clear();
    int64_t room = engine.n_batch();
    while (seq < seqs.size() && room > 0) {
      const std::vector<int32_t>& prompt = prompts[seq];
      const size_t n = std::min<size_t>(prompt.size() - done, static_cast<size_t>(room));
      const bool ends = done + n == prompt.size();
      chunks.push_back({seqs[seq], std::span(prompt).subspan(done, n), ends ? LogitsWanted::Last : LogitsWanted::None});
      room -= static_cast<int64_t>(n);
      done += n;
      if (ends) {
        ++seq;
        done = 0;
      }
    }
    logits = engine.step(chunks);
  }
  return logits;
}

}  // namespace

int64_t parallel_pp_tokens(const ParallelTest& test) {
  return static_cast<int64_t>(test.shared_prompt ? 1 : test.n_sequences) * test.n_prompt;
}

int64_t parallel_tg_tokens(const ParallelTest& test) { return static_cast<int64_t>(test.n_sequences) * test.n_gen; }

int64_t parallel_kv_tokens(const ParallelTest& test) { return parallel_pp_tokens(test) + parallel_tg_tokens(test); }

int64_t parallel_kv_slots_needed(const ParallelTest& test, int32_t block_size) {
  const int64_t per_sequence = (test.n_prompt + test.n_gen + block_size - 1) / block_size * block_size;
  return static_cast<int64_t>(test.n_sequences) * std::max<int64_t>(per_sequence, block_size);
}

ParallelSample run_parallel(engine::Engine& engine, std::mt19937& rng, const ParallelTest& test) {
  const int n_prompts = test.shared_prompt ? 1 : test.n_sequences;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n_prompts; ++i) prompts.push_back(random_tokens(rng, test.n_prompt, engine.n_vocab()));
  const std::vector<int32_t> generated =
      random_tokens(rng, static_cast<int64_t>(test.n_sequences) * test.n_gen, engine.n_vocab());

  std::vector<int32_t> seqs;
  for (int i = 0; i < n_prompts; ++i) seqs.push_back(engine.new_sequence());
  ParallelSample sample;
  auto start = std::chrono::steady_clock::now();
  std::span<const float> logits;
  if (test.n_prompt > 0) logits = evaluate_prompts(engine, seqs, prompts);
  while (static_cast<int>(seqs.size()) < test.n_sequences) seqs.push_back(engine.fork(seqs[0]));
  sample.pp_seconds = seconds_since(start);
  engine::require_finite_logits(logits);

  // Step s gives sequence i the token generated[s * N + i], as if each had sampled one from its logits.
  std::vector<engine::Engine::Chunk> chunks(seqs.size());
  start = std::chrono::steady_clock::now();
  for (int s = 0; s < test.n_gen; ++s) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      chunks[i] = {seqs[i], std::span(generated).subspan(static_cast<size_t>(s) * seqs.size() + i, 1),
                   LogitsWanted::Last};
    }
    logits = engine.step(chunks);
  }
  sample.tg_seconds = seconds_since(start);
  engine::require_finite_logits(logits);
  for (int32_t seq : seqs) engine.free_sequence(seq);
  return sample;
}

}  // namespace tessera::cli
