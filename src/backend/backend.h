// What the engine asks of a compute backend (cpu, cuda, hybrid): run the model over a step of tokens from several
// sequences (StepPlan), keeping their keys and values in a KV cache of token slots grouped in blocks that the
// engine hands out.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/kv_format.h"
#include "backend/step_plan.h"
#include "model/llama.h"

namespace tessera {

struct BackendOptions {
  int n_threads = 1;          // CPU threads
  int n_kv_slots = 0;         // token slots in the KV cache, for all sequences together
  int kv_block_size = 16;     // slots per block (StepPlan::block_size)
  KvFormats kv_format;        // of keys and values (f16 both by default)
  int gpu_layers = -1;        // hybrid: layers on the GPU (-1 = all)
};

// Copy block `from`'s keys and values (every layer) into block `to`.
struct KvBlockCopy {
  int32_t from;
  int32_t to;
};

// A context shift's work in the KV cache (Engine::shift_context), made after the block copies: first single slots
// copied (keys and values, every layer), then the keys of `rotated_slots` turned by RoPE as if their position
// moved by `delta`, in place (through f32 for the f16 and quantized formats).
struct KvSlotCopy {
  int32_t from;
  int32_t to;
};
struct KvShift {
  std::vector<KvSlotCopy> slot_copies;
  std::vector<int32_t> rotated_slots;
  int32_t delta = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // What it computes on, for reports: "AMD EPYC 9R14 (2 threads)", "NVIDIA H100 80GB HBM3", ...
  virtual std::string device() const = 0;
  // Makes the copies, then runs the step: every token's key and value go to its write slot, and the logits of
  // the plan's output rows, [n_outputs][n_vocab], go to `logits`. Throws std::runtime_error on failure.
  virtual void forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits) = 0;
  // Makes the copies, then the shift. Throws std::runtime_error on failure.
  virtual void shift(std::span<const KvBlockCopy> copies, const KvShift& shift) = 0;
  virtual uint64_t kv_cache_bytes() const = 0;
};

// A backend that streams its weights from host memory on every decode step (the CPU's repacked matrices), so
// that a bandwidth probe can read those very bytes.
class HostWeightStream {
 public:
  virtual ~HostWeightStream() = default;
  virtual std::span<const uint8_t> streamed_host_weights() const = 0;
};

// The backends this binary has, by name. The CPU backend is always there; the CUDA library adds `cuda` and
// `hybrid` when it is linked in, so the engine never names a GPU symbol.
struct BackendEntry {
  std::string name;
  // Empty when the backend can run here, else why not ("no CUDA GPU is available").
  std::function<std::string()> unavailable_reason;
  std::function<std::unique_ptr<Backend>(const model::LlamaModel&, const BackendOptions&)> create;
};
class BackendRegistry {
 public:
  static BackendRegistry& instance();
  void add(BackendEntry entry);
  const BackendEntry* find(std::string_view name) const;
  std::vector<std::string> names() const;

 private:
  std::vector<BackendEntry> entries_;
};

std::unique_ptr<Backend> make_cpu_backend(const model::LlamaModel& model, const BackendOptions& options);

}  // namespace tessera
