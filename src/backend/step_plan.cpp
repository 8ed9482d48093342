#include "backend/step_plan.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tessera {

StepPlanBuilder::StepPlanBuilder(int32_t n_vocab, int32_t block_size, int32_t n_slots) : n_vocab_(n_vocab) {
  if (block_size <= 0 || (block_size & (block_size - 1)) != 0 || n_slots <= 0 || n_slots % block_size != 0) {
    throw std::invalid_argument("a KV cache of " + std::to_string(n_slots) + " slots cannot be cut into blocks of " +
                                std::to_string(block_size));
  }
  plan_.block_size = block_size;
  plan_.n_slots = n_slots;
}

void StepPlanBuilder::clear() {
  plan_.tokens.clear();
  plan_.positions.clear();
  plan_.run_index.clear();
  plan_.write_slots.clear();
  plan_.runs.clear();
  plan_.block_table.clear();
  plan_.output_rows.clear();
  written_blocks_.clear();
}

void StepPlanBuilder::add_run(std::span<const int32_t> tokens, int32_t first_position,
                              std::span<const int32_t> blocks, LogitsWanted logits, int32_t window, int32_t n_sink) {
  const int32_t bs = plan_.block_size;
  auto fail = [](const std::string& what) { throw std::invalid_argument("step plan: " + what); };
  if (tokens.empty()) fail("a run has no tokens");
  if (first_position < 0) fail("position " + std::to_string(first_position) + " is negative");
  if (window < 0 || n_sink < 0) fail("a negative attention window or sink count");
  for (int32_t t : tokens) {
    if (t < 0 || t >= n_vocab_) {
      fail("token id " + std::to_string(t) + " is out of range [0, " + std::to_string(n_vocab_) + ")");
    }
  }
  const int64_t end = static_cast<int64_t>(first_position) + static_cast<int64_t>(tokens.size());
  const int64_t needed_blocks = (end + bs - 1) / bs;
  if (static_cast<int64_t>(blocks.size()) < needed_blocks) {
    fail(std::to_string(blocks.size()) + " KV blocks cannot hold positions up to " + std::to_string(end - 1));
  }
  const int32_t n_blocks_in_cache = plan_.n_slots / bs;
  StepPlan::Run run;
  run.first_position = first_position;
  run.n_tokens = static_cast<int32_t>(tokens.size());
  run.window = window;
  run.n_sink = n_sink;
  // Every block a token of the run reads (its sinks and its window) or writes must be in the cache.
  auto check_block = [&](int64_t b) {
    if (blocks[b] < 0 || blocks[b] >= n_blocks_in_cache) {
      fail("KV block " + std::to_string(blocks[b]) + " of position " + std::to_string(b * bs) +
           " is outside the cache of " + std::to_string(n_blocks_in_cache) + " blocks");
    }
  };
  for (int64_t b = run.first_visible(first_position) / bs; b < needed_blocks; ++b) check_block(b);
  for (int64_t b = 0; b * bs < std::min<int64_t>(n_sink, end); ++b) check_block(b);
  std::vector<int32_t> written;
  for (int64_t b = first_position / bs; b < needed_blocks; ++b) written.push_back(blocks[b]);
  for (int32_t b : written) {
    if (std::binary_search(written_blocks_.begin(), written_blocks_.end(), b)) {
      fail("two sequences of one step write into KV block " + std::to_string(b));
    }
  }

  // Valid: append.
  const int32_t index = static_cast<int32_t>(plan_.runs.size());
  run.token_begin = plan_.n_tokens();
  run.table_begin = static_cast<int32_t>(plan_.block_table.size());
  run.n_blocks = static_cast<int32_t>(needed_blocks);
  plan_.block_table.insert(plan_.block_table.end(), blocks.begin(), blocks.begin() + needed_blocks);
  plan_.runs.push_back(run);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t position = first_position + static_cast<int32_t>(i);
    const int32_t row = plan_.n_tokens();
    plan_.tokens.push_back(tokens[i]);
    plan_.positions.push_back(position);
    plan_.run_index.push_back(index);
    plan_.write_slots.push_back(plan_.slot(run, position));
    if (logits == LogitsWanted::All || (logits == LogitsWanted::Last && i + 1 == tokens.size())) {
      plan_.output_rows.push_back(row);
    }
  }
  written_blocks_.insert(written_blocks_.end(), written.begin(), written.end());
  std::sort(written_blocks_.begin(), written_blocks_.end());
}

}  // namespace tessera
