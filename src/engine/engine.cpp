#include "engine/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "backend/cpu/thread_pool.h"

namespace tessera::engine {
namespace {

constexpr int32_t kKvBlockSize = 16;
constexpr int kDefaultMaxContext = 4096;

}  // namespace

BackendKind parse_backend_kind(const std::string& name) {
  if (name == "cpu") return BackendKind::Cpu;
  if (name == "cuda") return BackendKind::Cuda;
  if (name == "hybrid" || name == "hybrid-f32") return BackendKind::Hybrid;
  throw std::invalid_argument("unknown backend '" + name + "' (expected cpu, cuda or hybrid)");
}

// MemAvailable from /proc/meminfo in bytes; 0 where it cannot be read.
static uint64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    uint64_t kib = 0;
    if (key == "MemAvailable:" && meminfo >> kib) return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

// The KV cache size in tokens, rounded up to whole blocks. On the CPU, a cache larger than the memory available
// is refused here, before anything is allocated for it.
static int choose_context(const model::LlamaModel& model, const EngineOptions& options) {
  if (options.n_ctx < 0) throw std::invalid_argument("--ctx-size must not be negative");
  const int64_t requested =
      options.n_ctx > 0 ? options.n_ctx : std::min(model.config.n_ctx_train, kDefaultMaxContext);
  const int64_t n = (requested + kKvBlockSize - 1) / kKvBlockSize * kKvBlockSize;
  if (n > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument(fmt::format("--ctx-size {} is more tokens than a KV cache can index", requested));
  }
  if (options.backend == BackendKind::Cpu) {
    const uint64_t element_bytes = options.kv_type == KvCacheType::F16 ? 2 : 4;
    const uint64_t bytes_per_token =
        2 * static_cast<uint64_t>(model.config.n_layer) * static_cast<uint64_t>(model.config.kv_dim()) * element_bytes;
    const uint64_t needed = static_cast<uint64_t>(n) * bytes_per_token;
    const uint64_t available = available_memory_bytes();
    if (available > 0 && needed > available) {
      throw std::runtime_error(fmt::format(
          "a KV cache of {} tokens needs {:.1f} GiB ({} bytes per token) but {:.1f} GiB of memory is available; "
          "lower --ctx-size",
          n, static_cast<double>(needed) / (1 << 30), bytes_per_token, static_cast<double>(available) / (1 << 30)));
    }
  }
  return static_cast<int>(n);
}

Engine::Engine(const gguf::File& file, const EngineOptions& options)
    : model_(model::LlamaModel::load(file)),
      n_ctx_(choose_context(model_, options)),
      n_batch_(std::max(1, options.n_batch)),
      kv_(n_ctx_, kKvBlockSize) {
  BackendOptions bo;
  bo.n_threads = options.n_threads > 0 ? options.n_threads : cpu::physical_core_count();
  bo.n_kv_slots = n_ctx_;
  bo.kv_type = options.kv_type;
  bo.gpu_layers = options.gpu_layers;
  switch (options.backend) {
    case BackendKind::Cpu: backend_ = make_cpu_backend(model_, bo); break;
    case BackendKind::Cuda: backend_ = make_cuda_backend(model_, bo); break;
    case BackendKind::Hybrid: backend_ = make_hybrid_backend(model_, bo); break;
  }
}

int32_t Engine::new_sequence() { return kv_.add_sequence(); }

void Engine::free_sequence(int32_t seq) { kv_.remove_sequence(seq); }

std::span<const float> Engine::decode(std::span<const Item> items) {
  const int n_vocab = model_.config.n_vocab;
  // Reserve room for every sequence first, so a full context changes nothing.
  std::map<int32_t, int32_t> added;
  for (const Item& item : items) {
    if (item.token < 0 || item.token >= n_vocab) {
      throw std::invalid_argument("token id " + std::to_string(item.token) + " is out of range [0, " +
                                  std::to_string(n_vocab) + ")");
    }
    ++added[item.seq];
  }
  for (const auto& [seq, n] : added) kv_.reserve(seq, n);

  size_t n_wanted = 0;
  for (const Item& item : items) n_wanted += item.want_logits;
  logits_.resize(n_wanted * static_cast<size_t>(n_vocab));

  std::vector<int32_t> tokens, positions, seq_index, output_rows;
  std::vector<int32_t> seq_ids;
  std::vector<ForwardBatch::Sequence> sequences;
  size_t wanted_done = 0;
  for (size_t begin = 0; begin < items.size(); begin += n_batch_) {
    const size_t end = std::min(items.size(), begin + n_batch_);
    tokens.clear();
    positions.clear();
    seq_index.clear();
    output_rows.clear();
    seq_ids.clear();
    sequences.clear();
    std::map<int32_t, int32_t> next_pos;
    for (size_t i = begin; i < end; ++i) {
      const Item& item = items[i];
      auto it = std::find(seq_ids.begin(), seq_ids.end(), item.seq);
      if (it == seq_ids.end()) {
        seq_ids.push_back(item.seq);
        sequences.push_back({kv_.slots(item.seq)});
        next_pos[item.seq] = kv_.length(item.seq);
        it = seq_ids.end() - 1;
      }
      tokens.push_back(item.token);
      positions.push_back(next_pos[item.seq]++);
      seq_index.push_back(static_cast<int32_t>(it - seq_ids.begin()));
      if (item.want_logits) output_rows.push_back(static_cast<int32_t>(i - begin));
    }
    ForwardBatch batch{tokens, positions, seq_index, sequences, output_rows};
    backend_->forward(batch, logits_.data() + wanted_done * n_vocab);
    wanted_done += output_rows.size();
    for (const auto& [seq, pos] : next_pos) kv_.advance(seq, pos - kv_.length(seq));
  }
  return logits_;
}

std::span<const float> Engine::eval(int32_t seq, std::span<const int32_t> tokens, bool all) {
  std::vector<Item> items;
  items.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) items.push_back({seq, tokens[i], all || i + 1 == tokens.size()});
  return decode(items);
}

}  // namespace tessera::engine
