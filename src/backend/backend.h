// What the engine asks of a compute backend (cpu, cuda, hybrid): run the model over a batch of tokens from
// several sequences, keeping their keys and values in a KV cache of token slots that the engine hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "model/llama.h"

namespace tessera {

enum class KvCacheType { F16, F32 };

struct BackendOptions {
  int n_threads = 0;          // CPU threads; 0 = physical cores
  int n_kv_slots = 0;         // token slots in the KV cache, for all sequences together
  KvCacheType kv_type = KvCacheType::F16;
  int gpu_layers = -1;        // hybrid: layers on the GPU (-1 = all)
};

// One forward call. Token i belongs to sequence seq_index[i] and sits at position positions[i]; it writes its
// K/V into sequences[seq_index[i]].slots[positions[i]] and attends to slots[0 .. positions[i]] of its sequence.
// The engine maps positions to slots through its block tables, so a sequence's slots need not be contiguous.
struct ForwardBatch {
  struct Sequence {
    std::span<const int32_t> slots;  // cache slot of each position 0..n-1 (covers every position in the batch)
  };
  std::span<const int32_t> tokens;       // [n_tokens]
  std::span<const int32_t> positions;    // [n_tokens]
  std::span<const int32_t> seq_index;    // [n_tokens] index into sequences
  std::span<const Sequence> sequences;
  std::span<const int32_t> output_rows;  // tokens whose logits are wanted, strictly ascending
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // What it computes on, for reports: "AMD EPYC 9R14 (2 threads)", "NVIDIA H100 80GB HBM3", ...
  virtual std::string device() const = 0;
  // Writes logits [output_rows.size()][n_vocab] into `logits`. Throws std::runtime_error on failure.
  virtual void forward(const ForwardBatch& batch, float* logits) = 0;
  virtual uint64_t kv_cache_bytes() const = 0;
  // The host memory that token generation streams weights from (the CPU's repacked matrices), so that a
  // bandwidth probe can read those very bytes; empty where there is none.
  virtual std::span<const uint8_t> streamed_host_weights() const { return {}; }
};

std::unique_ptr<Backend> make_cpu_backend(const model::LlamaModel& model, const BackendOptions& options);

// Defined by the CUDA backend when it is built (TESSERA_HAVE_CUDA); throws std::runtime_error with a clear
// message when there is no GPU or too little memory.
std::unique_ptr<Backend> make_cuda_backend(const model::LlamaModel& model, const BackendOptions& options);
std::unique_ptr<Backend> make_hybrid_backend(const model::LlamaModel& model, const BackendOptions& options);

}  // namespace tessera
