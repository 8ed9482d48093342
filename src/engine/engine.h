// The engine: a loaded model, a backend, and a KV cache of token slots handed out in blocks to sequences.
// Every forward call takes tokens of one or more sequences with their positions (a prompt is one batch; each
// decode step is one token per sequence).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/kv_blocks.h"
#include "gguf/gguf.h"
#include "model/llama.h"

namespace tessera::engine {

enum class BackendKind { Cpu, Cuda, Hybrid };
BackendKind parse_backend_kind(const std::string& name);  // cpu | cuda | hybrid | hybrid-f32; throws otherwise

struct EngineOptions {
  BackendKind backend = BackendKind::Cpu;
  int n_threads = 0;     // 0: physical cores
  int n_ctx = 0;         // KV cache size in tokens; 0: the model's context length capped at 4096
  KvCacheType kv_type = KvCacheType::F16;
  int gpu_layers = -1;   // hybrid only
  int n_batch = 512;     // most tokens in one forward call; longer inputs are split
};

class Engine {
 public:
  // The File must outlive the engine (weights stay in its mapping).
  Engine(const gguf::File& file, const EngineOptions& options);

  const model::LlamaModel& model() const { return model_; }
  const Backend& backend() const { return *backend_; }
  int n_ctx() const { return n_ctx_; }
  int n_vocab() const { return model_.config.n_vocab; }
  uint64_t kv_cache_bytes() const { return backend_->kv_cache_bytes(); }

  int32_t new_sequence();
  void free_sequence(int32_t seq);
  int32_t sequence_length(int32_t seq) const { return kv_.length(seq); }

  // One token appended to a sequence; `want_logits` asks for its logits row.
  struct Item {
    int32_t seq;
    int32_t token;
    bool want_logits;
  };
  // Appends the items to their sequences (in order) and runs them, split into n_batch-sized forward calls.
  // Returns the logits of the items that asked, [n_wanted][n_vocab], valid until the next call. Throws
  // ContextFull (leaving every sequence unchanged) if a sequence would outgrow the cache.
  std::span<const float> decode(std::span<const Item> items);

  // Convenience for one sequence: appends `tokens` and returns the logits of the last one (all == false) or of
  // every one (all == true).
  std::span<const float> eval(int32_t seq, std::span<const int32_t> tokens, bool all = false);

 private:
  model::LlamaModel model_;
  std::unique_ptr<Backend> backend_;
  int n_ctx_;
  int n_batch_;
  KvBlocks kv_;
  std::vector<float> logits_;
};

}  // namespace tessera::engine
