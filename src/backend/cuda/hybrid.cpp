// --backend hybrid: the first N layers (with the token embedding) on the GPU, the remaining layers and the output
// projection on the CPU through the CPU backend's own layer code. The residual stream crosses once per step.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/llama_cpu.h"
#include "backend/cuda/llama_cuda.h"

namespace tessera::cuda {
namespace {

class HybridBackend final : public Backend {
 public:
  HybridBackend(const model::LlamaModel& model, const BackendOptions& options) : model_(model) {
    const int n_layer = model.config.n_layer;
    n_gpu_layers_ = options.gpu_layers < 0 ? n_layer : std::min(options.gpu_layers, n_layer);
    if (n_gpu_layers_ == n_layer) {
      gpu_ = std::make_unique<LlamaCuda>(model, options, n_layer, true);
      return;
    }
    if (n_gpu_layers_ > 0) gpu_ = std::make_unique<LlamaCuda>(model, options, n_gpu_layers_, false);
    cpu_ = std::make_unique<cpu::LlamaCpu>(model, options, n_gpu_layers_, n_layer);
  }

  std::string_view name() const override { return "hybrid"; }
  std::string device() const override {
    const std::string cpu = cpu_ ? cpu::cpu_device_name(cpu_->n_threads()) : "";
    if (!gpu_) return cpu;
    const std::string gpu = gpu_->device_name() + " (" + std::to_string(n_gpu_layers_) + " layers)";
    return cpu.empty() ? gpu : gpu + " + " + cpu;
  }

  uint64_t kv_cache_bytes() const override {
    return (gpu_ ? gpu_->kv_cache_bytes() : 0) + (cpu_ ? cpu_->kv_cache_bytes() : 0);
  }
  std::span<const uint8_t> streamed_host_weights() const override {
    return cpu_ ? cpu_->interleaved_weights() : std::span<const uint8_t>{};
  }

  void forward(const ForwardBatch& batch, float* logits) override {
    if (!cpu_) {
      gpu_->forward(batch, logits);
      return;
    }
    const size_t n = batch.tokens.size() * static_cast<size_t>(model_.config.n_embd);
    if (x_.size() < n) x_.resize(n);
    if (gpu_) {
      gpu_->forward_layers(batch, x_.data());
    } else {
      cpu_->embed(batch.tokens, x_.data());
    }
    cpu_->run_layers(batch, x_.data(), true);
    cpu_->output(x_.data(), static_cast<int64_t>(batch.output_rows.size()), logits);
  }

 private:
  const model::LlamaModel& model_;
  int n_gpu_layers_ = 0;
  std::unique_ptr<LlamaCuda> gpu_;
  std::unique_ptr<cpu::LlamaCpu> cpu_;
  std::vector<float> x_;  // residual stream handed from the GPU to the CPU, [n_tokens][n_embd]
};

}  // namespace
}  // namespace tessera::cuda

namespace tessera {

std::unique_ptr<Backend> make_hybrid_backend(const model::LlamaModel& model, const BackendOptions& options) {
  return std::make_unique<cuda::HybridBackend>(model, options);
}

}  // namespace tessera
