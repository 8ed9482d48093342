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
void check_host_kv_memory(const model::LlamaModel& model, int64_t n_slots, KvFormat format) {
  const uint64_t element_bytes = format == KvFormat::F16 ? 2 : 4;
  const uint64_t bytes_per_token =
      2 * static_cast<uint64_t>(model.config.n_layer) * static_cast<uint64_t>(model.config.kv_dim()) * element_bytes;
  const uint64_t needed = static_cast<uint64_t>(n_slots) * bytes_per_token;
  const uint64_t available = available_memory_bytes();
  if (available > 0 && needed > available) {
    throw std::runtime_error(fmt::format(
        "a KV cache of {} tokens needs {:.1f} GiB ({} bytes per token) but {:.1f} GiB of memory is available; "
        "lower --ctx-size",
        n_slots, static_cast<double>(needed) / (1 << 30), bytes_per_token, static_cast<double>(available) / (1 << 30)));
  }
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
int32_t kv_slot_count(const model::LlamaModel& model, const EngineOptions& options, int n_ctx,
                      const BackendEntry& backend) {
  if (options.n_kv_tokens < 0) throw std::invalid_argument("the KV cache size must not be negative");
  if (options.kv_sequences < 1) throw std::invalid_argument("the KV cache must hold at least one sequence");
  const int64_t slots = options.n_kv_tokens > 0 ? options.n_kv_tokens : int64_t{options.kv_sequences} * n_ctx;
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
      kv_(kv_slot_count(model_, options, n_ctx_, backend_entry_), kKvBlockSize),
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
  return hit.n_tokens;
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
    plan_.add_run(c.tokens, kv_.length(c.seq), kv_.blocks(c.seq), c.logits);
  }
  logits_.resize(n_wanted * static_cast<size_t>(n_vocab()));
  backend_->forward(pending_copies_, plan_.plan(), logits_.data());
  pending_copies_.clear();
  for (const Chunk& c : chunks) kv_.append(c.seq, c.tokens);
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
