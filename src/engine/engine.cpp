#include "engine/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <set>
#include <string>

#include "util/cpu_info.h"

namespace tessera::engine {
namespace {

constexpr int kDefaultMaxContext = 4096;

int round_up_to_block(int n) { return (n + kKvBlockSize - 1) / kKvBlockSize * kKvBlockSize; }

int choose_context(const model::LlamaModel& model, int requested) {
  if (requested < 0) throw std::invalid_argument("--ctx-size must not be negative");
  const int64_t n = requested > 0 ? requested : std::min(model.config.n_ctx_train, kDefaultMaxContext);
  if (n > std::numeric_limits<int32_t>::max() - kKvBlockSize) {
    throw std::invalid_argument(fmt::format("--ctx-size {} is more tokens than a KV cache can index", n));
  }
  return round_up_to_block(static_cast<int>(n));
}

// MemAvailable from /proc/meminfo in bytes; 0 where it cannot be read.
uint64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    uint64_t kib = 0;
    if (key == "MemAvailable:" && meminfo >> kib) return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

// A CPU KV cache larger than the memory available is refused before anything is allocated for it.
void check_host_kv_memory(const model::LlamaModel& model, int64_t n_slots, KvFormats formats) {
  const uint64_t bytes_per_token =
      static_cast<uint64_t>(model.config.n_layer) *
      (kv_row_bytes(formats.k, model.config.kv_dim()) + kv_row_bytes(formats.v, model.config.kv_dim()));
  const uint64_t needed = static_cast<uint64_t>(n_slots) * bytes_per_token;
  const uint64_t available = available_memory_bytes();
  if (available > 0 && needed > available) {
    throw std::runtime_error(fmt::format(
        "a KV cache of {} tokens needs {:.1f} GiB ({} bytes per token) but {:.1f} GiB of memory is available; "
        "lower --ctx-size",
        n_slots, static_cast<double>(needed) / (1 << 30), bytes_per_token, static_cast<double>(available) / (1 << 30)));
  }
}

// A window asked for narrows the model's own; without either, 0.
int choose_window(const model::LlamaModel& model, const EngineOptions& options) {
  if (options.kv_window < 0) throw std::invalid_argument("--kv-window must not be negative");
  if (options.n_sink < 0) throw std::invalid_argument("--keep must not be negative");
  const int own = model.config.sliding_window;
  if (options.kv_window == 0) return own;
  return own > 0 ? std::min(own, options.kv_window) : options.kv_window;
}

// Slots one sequence holds at most with a window: its sinks, its window and one step's tokens, in whole blocks.
int window_slots(int window, int n_sink, int n_batch) {
  return round_up_to_block(n_sink) + round_up_to_block(window) + round_up_to_block(n_batch) + kKvBlockSize;
}

}  // namespace

std::string canonical_backend_name(const std::string& name) {
  if (name == "cpu" || name == "cuda" || name == "hybrid") return name;
  if (name == "hybrid-f32") return "hybrid";
  throw std::invalid_argument("unknown backend '" + name + "' (expected cpu, cuda or hybrid)");
}

namespace {

// The backend to create: hybrid means "use the GPU where there is one"; without one it runs on the CPU with a
// notice, as llama.cpp does with -ngl.
const BackendEntry& resolve_backend(const std::string& option, std::vector<std::string>& notices) {
  const std::string name = canonical_backend_name(option);
  const BackendRegistry& registry = BackendRegistry::instance();
  const BackendEntry* entry = registry.find(name);
  if (name == "hybrid") {
    const std::string reason = entry ? entry->unavailable_reason() : "this tessera was built without CUDA";
    if (!reason.empty()) {
      notices.push_back("warning: --backend hybrid runs on the CPU: " + reason);
      entry = registry.find("cpu");
    }
  }
  if (!entry) throw std::runtime_error("this tessera was built without CUDA, so --backend " + name + " is unavailable");
  return *entry;
}

// The KV cache's slots for all sequences together, whole blocks, checked against host memory before anything is
// allocated for it where the CPU holds it.
// Without a size asked for: kv_sequences sequences of n_ctx tokens, or of a window's slots where that is less.
int32_t kv_slot_count(const model::LlamaModel& model, const EngineOptions& options, int n_ctx, int window, int n_sink,
                      int n_batch, const BackendEntry& backend) {
  if (options.n_kv_tokens < 0) throw std::invalid_argument("the KV cache size must not be negative");
  if (options.kv_sequences < 1) throw std::invalid_argument("the KV cache must hold at least one sequence");
  const int64_t per_sequence = window > 0 ? std::min<int64_t>(n_ctx, window_slots(window, n_sink, n_batch)) : n_ctx;
  const int64_t slots = options.n_kv_tokens > 0 ? options.n_kv_tokens : int64_t{options.kv_sequences} * per_sequence;
  if (slots > std::numeric_limits<int32_t>::max() - kKvBlockSize) {
    throw std::invalid_argument(fmt::format("a KV cache of {} tokens is more than it can index", slots));
  }
  const int n = round_up_to_block(static_cast<int>(slots));
  if (backend.name == "cpu") check_host_kv_memory(model, n, options.kv_format);
  return n;
}

}  // namespace

Engine::Engine(const gguf::File& file, const EngineOptions& options)
    : model_(model::LlamaModel::load(file)),
      backend_entry_(resolve_backend(options.backend, notices_)),
      n_ctx_(choose_context(model_, options.n_ctx)),
      n_batch_(std::max(1, options.n_batch)),
      window_(choose_window(model_, options)),
      n_sink_(options.kv_window > 0 ? options.n_sink : 0),
      kv_(kv_slot_count(model_, options, n_ctx_, window_, n_sink_, n_batch_, backend_entry_), kKvBlockSize),
      plan_(model_.config.n_vocab, kKvBlockSize, kv_.n_slots()) {
  kv_.set_prefix_caching(options.prefix_caching);
  BackendOptions bo;
  bo.n_threads = options.n_threads > 0 ? options.n_threads : util::physical_core_count();
  bo.n_kv_slots = kv_.n_slots();
  bo.kv_block_size = kKvBlockSize;
  bo.kv_format = options.kv_format;
  bo.gpu_layers = options.gpu_layers;
  backend_ = backend_entry_.create(model_, bo);
}

int32_t Engine::attach_prefix(int32_t seq, std::span<const int32_t> tokens, int32_t max_tokens) {
  const KvBlocks::PrefixHit hit = kv_.attach_prefix(seq, tokens, max_tokens);
  if (hit.copy) pending_copies_.push_back({hit.copy->from, hit.copy->to});
  drop_invisible_blocks(seq);
  return hit.n_tokens;
}

void Engine::drop_invisible_blocks(int32_t seq) {
  if (window_ == 0) return;
  // The next token, at position length(), sees positions from length() - window + 1 on (and the sinks).
  kv_.drop_blocks_before(seq, kv_.length(seq) - window_ + 1, n_sink_);
}

int32_t Engine::kv_tokens_held(int32_t n) const {
  return window_ > 0 ? std::min(n, window_slots(window_, n_sink_, n_batch_)) : n;
}

int32_t Engine::peak_blocks_needed(int32_t seq, int32_t n) const {
  const int32_t needed = kv_.blocks_needed(seq, n);
  return window_ > 0 ? std::min(needed, window_slots(window_, n_sink_, n_batch_) / kKvBlockSize) : needed;
}

int32_t Engine::shift_context(int32_t seq, int32_t keep) {
  const int32_t length = kv_.length(seq);
  if (window_ > 0 && keep != n_sink_) {
    throw std::invalid_argument("with a sliding window a context shift keeps exactly the " + std::to_string(n_sink_) +
                                " attention sinks, not " + std::to_string(keep) + " tokens");
  }
  const int32_t n_discard = keep < 0 ? 0 : (length - keep) / 2 / kKvBlockSize * kKvBlockSize;
  if (n_discard == 0) {
    throw std::invalid_argument("a context shift that keeps " + std::to_string(keep) + " of " +
                                std::to_string(length) + " tokens has nothing to drop");
  }
  const KvBlocks::ShiftWork work = kv_.shift(seq, keep, n_discard);
  for (const KvBlocks::BlockCopy& c : work.block_copies) pending_copies_.push_back({c.from, c.to});
  KvShift shift;
  for (const KvBlocks::BlockCopy& c : work.slot_copies) shift.slot_copies.push_back({c.from, c.to});
  shift.rotated_slots = work.rotated_slots;
  shift.delta = -n_discard;
  backend_->shift(pending_copies_, shift);
  pending_copies_.clear();
  return n_discard;
}

int32_t Engine::fork(int32_t seq) {
  const auto [id, copy] = kv_.fork(seq);
  if (copy) pending_copies_.push_back({copy->from, copy->to});
  return id;
}

int32_t Engine::blocks_needed(std::span<const Chunk> chunks) const {
  int32_t n = 0;
  for (const Chunk& c : chunks) n += kv_.blocks_needed(c.seq, static_cast<int32_t>(c.tokens.size()));
  return n;
}

std::span<const float> Engine::step(std::span<const Chunk> chunks) {
  std::set<int32_t> seen;
  size_t n_wanted = 0;
  for (const Chunk& c : chunks) {
    if (!seen.insert(c.seq).second) {
      throw std::invalid_argument("sequence " + std::to_string(c.seq) + " has two chunks in one step");
    }
    const int64_t length = static_cast<int64_t>(kv_.length(c.seq)) + static_cast<int64_t>(c.tokens.size());
    if (length > n_ctx_) {
      throw ContextFull("the context is full: " + std::to_string(length) + " tokens do not fit in the " +
                        std::to_string(n_ctx_) + "-token context; raise --ctx-size");
    }
    n_wanted += c.logits == LogitsWanted::All ? c.tokens.size() : c.logits == LogitsWanted::Last ? 1 : 0;
  }
  if (blocks_needed(chunks) > kv_.available_blocks()) {
    throw ContextFull("the KV cache is full: this step needs " + std::to_string(blocks_needed(chunks)) +
                      " more blocks of " + std::to_string(kKvBlockSize) + " tokens and " +
                      std::to_string(kv_.available_blocks()) + " are left");
  }
  plan_.clear();
  for (const Chunk& c : chunks) {
    kv_.reserve(c.seq, static_cast<int32_t>(c.tokens.size()));
    plan_.add_run(c.tokens, kv_.length(c.seq), kv_.blocks(c.seq), c.logits, window_, n_sink_);
  }
  logits_.resize(n_wanted * static_cast<size_t>(n_vocab()));
  backend_->forward(pending_copies_, plan_.plan(), logits_.data());
  pending_copies_.clear();
  for (const Chunk& c : chunks) {
    kv_.append(c.seq, c.tokens);
    drop_invisible_blocks(c.seq);
  }
  return logits_;
}

std::span<const float> Engine::eval(int32_t seq, std::span<const int32_t> tokens, bool all) {
  if (tokens.empty()) throw std::invalid_argument("nothing to evaluate");
  std::vector<float> collected;
  std::span<const float> logits;
  for (size_t begin = 0; begin < tokens.size(); begin += n_batch_) {
    const size_t n = std::min(tokens.size() - begin, static_cast<size_t>(n_batch_));
    const bool last = begin + n == tokens.size();
    const Chunk chunk{seq, tokens.subspan(begin, n), all ? LogitsWanted::All : last ? LogitsWanted::Last : LogitsWanted::None};
    logits = step(std::span(&chunk, 1));
    if (all && !last) collected.insert(collected.end(), logits.begin(), logits.end());
  }
  if (!all || collected.empty()) return logits;
  collected.insert(collected.end(), logits.begin(), logits.end());
  logits_ = std::move(collected);
  return logits_;
}

}  // namespace tessera::engine
