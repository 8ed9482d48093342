// The engine: a loaded model, a backend, and a KV cache of token slots handed out in blocks to sequences. Every
// forward call (a step) takes a chunk of tokens from each of one or more sequences: a prompt's next piece, or a
// decode step's one token per sequence. Requests (request.h) and the scheduler that batches them sit on top.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/step_plan.h"
#include "engine/kv_blocks.h"
#include "gguf/gguf.h"
#include "model/llama.h"

namespace tessera::engine {

constexpr int32_t kKvBlockSize = 16;  // KV cache slots per block

struct EngineOptions {
  std::string backend = "cpu";  // cpu | cuda | hybrid (alias hybrid-f32)
  int n_threads = 0;            // CPU threads; 0: physical cores
  int n_ctx = 0;                // most tokens one sequence holds; 0: the model's context length capped at 4096
  int n_kv_tokens = 0;          // KV cache slots for all sequences together; 0: kv_sequences x n_ctx (or window)
  int kv_sequences = 1;
  KvFormats kv_format;          // of keys and values (f16 both by default)
  int gpu_layers = -1;          // hybrid only
  int n_batch = 512;            // most tokens in one forward call; eval() splits longer inputs
  bool prefix_caching = true;   // keep finished sequences' KV blocks for later sequences with the same prefix
  // Sliding-window attention for any model (an approximation unless the model was trained with it): a token sees
  // the kv_window latest positions, its own included, and the first n_sink positions (attention sinks, as
  // StreamingLLM keeps them). 0: the model's own window (<arch>.attention.sliding_window), if it has one, without
  // sinks. With a window the cache keeps only the visible blocks of each sequence, and the default cache size
  // (n_kv_tokens 0) is what one sequence needs, not n_ctx.
  int kv_window = 0;
  int n_sink = 0;
};

// The registry's name for a backend option ("hybrid-f32" is "hybrid"); throws std::invalid_argument for names
// no build knows.
std::string canonical_backend_name(const std::string& name);

class Engine {
 public:
  // The File must outlive the engine (weights stay in its mapping).
  Engine(const gguf::File& file, const EngineOptions& options);

  const model::LlamaModel& model() const { return model_; }
  const Backend& backend() const { return *backend_; }
  // Lines for the user about choices made for them (a backend that fell back to the CPU, ...).
  const std::vector<std::string>& notices() const { return notices_; }
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  int window() const { return window_; }  // 0: every earlier position is seen
  int n_sink() const { return n_sink_; }
  int n_vocab() const { return model_.config.n_vocab; }
  uint64_t kv_cache_bytes() const { return backend_->kv_cache_bytes(); }
  const KvBlocks& kv() const { return kv_; }

  int32_t new_sequence() { return kv_.add_sequence(); }
  void free_sequence(int32_t seq) { kv_.remove_sequence(seq); }
  int32_t sequence_length(int32_t seq) const { return kv_.length(seq); }
  // For a new, empty sequence: takes the cached KV of the longest prefix of tokens[0, max_tokens) (the prefix
  // cache, kv_blocks.h) and returns how many tokens it now holds.
  int32_t attach_prefix(int32_t seq, std::span<const int32_t> tokens, int32_t max_tokens);
  // A new sequence holding the same tokens as `seq`, sharing its KV blocks. Throws ContextFull.
  int32_t fork(int32_t seq);

  // One sequence's tokens in a step; they continue the sequence.
  struct Chunk {
    int32_t seq;
    std::span<const int32_t> tokens;
    LogitsWanted logits = LogitsWanted::Last;
  };
  // KV blocks that these chunks need beyond what their sequences hold; a step fits when this is at most
  // kv().available_blocks() and no sequence outgrows n_ctx().
  int32_t blocks_needed(std::span<const Chunk> chunks) const;
  // Cache slots that a sequence of n tokens occupies at most (n without a window; with one, its window, sinks and
  // one step of n_batch tokens), and the blocks that n more tokens of `seq` take at most at once.
  int32_t kv_tokens_held(int32_t n) const;
  int32_t peak_blocks_needed(int32_t seq, int32_t n) const;

  // Context shift, for a sequence whose context is full: keeps its first `keep` tokens, drops the oldest half of
  // the rest (rounded down to whole KV blocks) and moves the others down to follow the kept ones, re-rotating
  // their keys in place (no recomputation). Returns how many tokens were dropped. Throws std::invalid_argument
  // when nothing would be dropped, or, with a sliding window, when `keep` is not the sink count (the kept
  // positions must be ones the window keeps); ContextFull when a shared block needs a copy and none is left.
  int32_t shift_context(int32_t seq, int32_t keep);
  // One forward call over the chunks (of distinct sequences). Returns the logits of the wanted rows in chunk
  // order, [n_wanted][n_vocab], valid until the next call. Throws ContextFull, changing no sequence, when a
  // sequence would outgrow the context or the cache has too few blocks; std::invalid_argument for a bad chunk.
  std::span<const float> step(std::span<const Chunk> chunks);
  // One sequence's tokens in n_batch-sized steps; the logits of the last token (all == false) or of every one.
  std::span<const float> eval(int32_t seq, std::span<const int32_t> tokens, bool all = false);

 private:
  model::LlamaModel model_;
  // Gives back the blocks of `seq` that no later token sees (sliding window).
  void drop_invisible_blocks(int32_t seq);

  std::vector<std::string> notices_;
  const BackendEntry& backend_entry_;
  int n_ctx_;
  int n_batch_;
  int window_;
  int n_sink_;
  KvBlocks kv_;
  StepPlanBuilder plan_;
  std::unique_ptr<Backend> backend_;
  std::vector<KvBlockCopy> pending_copies_;  // made by the next forward call, before it writes
  std::vector<float> logits_;
};

}  // namespace tessera::engine
