// One forward call as the backends run it: the tokens of several sequences, each sequence's tokens one run of
// consecutive positions, each sequence's KV cache a table of blocks. StepPlanBuilder is the one place a step is
// validated; the backends trust the plan they are given.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera {

enum class LogitsWanted { None, Last, All };

struct StepPlan {
  // One sequence's share of the step.
  struct Run {
    int32_t token_begin = 0;     // its tokens are [token_begin, token_begin + n_tokens) of the step
    int32_t n_tokens = 0;
    int32_t first_position = 0;  // of its first token; the others follow one position apart
    // Its blocks are block_table[table_begin, table_begin + n_blocks). Every run has its own part of the table,
    // even when two sequences share blocks, so table_begin also tells the runs apart (CUDA's decode attention
    // uses it as the sequence's identity).
    int32_t table_begin = 0;
    int32_t n_blocks = 0;        // enough for positions 0 .. end_position() - 1
    // Sliding-window attention: a token at position p sees the keys of positions j <= p with
    // j > p - window (0: every earlier position) or j < n_sink (attention sinks, kept visible).
    int32_t window = 0;
    int32_t n_sink = 0;
    int32_t end_position() const { return first_position + n_tokens; }
    // The oldest key a token at `position` sees apart from the sinks.
    int32_t first_visible(int32_t position) const {
      return window > 0 && position - window + 1 > 0 ? position - window + 1 : 0;
    }
  };

  int32_t block_size = 0;  // cache slots per block, a power of two
  int32_t n_slots = 0;     // slots in the whole cache
  std::vector<int32_t> tokens;       // [n_tokens]
  std::vector<int32_t> positions;    // [n_tokens]
  std::vector<int32_t> run_index;    // [n_tokens] the run each token belongs to
  std::vector<int32_t> write_slots;  // [n_tokens] the cache slot each token's key and value go to
  std::vector<Run> runs;
  std::vector<int32_t> block_table;  // [sum of n_blocks]; -1 for a block no token of the step sees
  std::vector<int32_t> output_rows;  // the tokens whose logits are wanted, ascending

  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t n_outputs() const { return static_cast<int32_t>(output_rows.size()); }
  // The cache slot of `position` in the run's sequence.
  int32_t slot(const Run& run, int32_t position) const {
    return block_table[run.table_begin + position / block_size] * block_size + position % block_size;
  }
};

class StepPlanBuilder {
 public:
  // n_vocab bounds the token ids; the cache has n_slots slots in blocks of block_size (a power of two).
  StepPlanBuilder(int32_t n_vocab, int32_t block_size, int32_t n_slots);

  void clear();
  // Appends the run of one sequence: `tokens` at positions first_position, first_position + 1, ..., with the
  // sequence's blocks for positions 0 .. first_position + tokens.size() - 1. Throws std::invalid_argument
  // naming the problem (a token id out of the vocabulary, too few blocks, a block outside the cache, a block
  // that a visible key needs marked -1, a slot that an earlier run of the step writes too), leaving the plan as
  // it was.
  void add_run(std::span<const int32_t> tokens, int32_t first_position, std::span<const int32_t> blocks,
               LogitsWanted logits, int32_t window = 0, int32_t n_sink = 0);
  const StepPlan& plan() const { return plan_; }

 private:
  int32_t n_vocab_;
  StepPlan plan_;
  std::vector<int32_t> written_blocks_;  // blocks the step writes into, sorted (two runs must not share one)
};

}  // namespace tessera
