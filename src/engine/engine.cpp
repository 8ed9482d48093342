#include "engine/engine.h"

#include <algorithm>
#include <map>

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

static int choose_context(const model::LlamaModel& model, int requested) {
  if (requested < 0) throw std::invalid_argument("--ctx-size must not be negative");
  int n = requested > 0 ? requested : std::min(model.config.n_ctx_train, kDefaultMaxContext);
  return (n + kKvBlockSize - 1) / kKvBlockSize * kKvBlockSize;
}

Engine::Engine(const gguf::File& file, const EngineOptions& options)
    : model_(model::LlamaModel::load(file)),
      n_ctx_(choose_context(model_, options.n_ctx)),
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
