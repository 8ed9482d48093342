// The backends the CUDA library adds to the registry (backend.h):
//   cuda:   the whole model on one GPU.
//   hybrid: the first N layers (with the token embedding) on the GPU, the remaining layers and the output
//           projection on the CPU through the CPU backend's own layer code; the residual stream crosses once per step.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/llama_cpu.h"
#include "backend/cuda/llama_cuda.h"
#include "util/cpu_info.h"

namespace tessera::cuda {
namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const model::LlamaModel& model, const BackendOptions& options)
      : llama_(model, options, model.config.n_layer, true) {}
  std::string_view name() const override { return "cuda"; }
  std::string device() const override { return llama_.device_name(); }
  uint64_t kv_cache_bytes() const override { return llama_.kv_cache_bytes(); }
  void forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits) override {
    llama_.forward(copies, plan, logits);
  }
  void shift(std::span<const KvBlockCopy> copies, const KvShift& shift) override { llama_.shift(copies, shift); }

 private:
  LlamaCuda llama_;
};

class HybridBackend final : public Backend, public HostWeightStream {
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
    const std::string cpu = cpu_ ? util::cpu_device_name(cpu_->n_threads()) : "";
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

  void shift(std::span<const KvBlockCopy> copies, const KvShift& shift) override {
    if (gpu_) gpu_->shift(copies, shift);
    if (cpu_) {
      cpu_->copy_kv_blocks(copies);
      cpu_->shift_kv(shift);
    }
  }

  void forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits) override {
    if (!cpu_) {
      gpu_->forward(copies, plan, logits);
      return;
    }
    cpu_->copy_kv_blocks(copies);
    if (plan.n_tokens() == 0) {
      if (gpu_) gpu_->forward_layers(copies, plan, nullptr);
      return;
    }
    const size_t n = plan.tokens.size() * static_cast<size_t>(model_.config.n_embd);
    if (x_.size() < n) x_.resize(n);
    if (gpu_) {
      gpu_->forward_layers(copies, plan, x_.data());
    } else {
      cpu_->embed(plan.tokens, x_.data());
    }
    cpu_->run_layers(plan, x_.data(), true);
    cpu_->output(x_.data(), plan.n_outputs(), logits);
  }

 private:
  const model::LlamaModel& model_;
  int n_gpu_layers_ = 0;
  std::unique_ptr<LlamaCuda> gpu_;
  std::unique_ptr<cpu::LlamaCpu> cpu_;
  std::vector<float> x_;  // residual stream handed from the GPU to the CPU, [n_tokens][n_embd]
};

std::string unavailable_reason() {
  int n_devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&n_devices);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA GPU is available (") + cudaGetErrorString(err) + ")";
  }
  return n_devices == 0 ? "no CUDA GPU is available" : "";
}

const bool registered = [] {
  BackendRegistry& registry = BackendRegistry::instance();
  registry.add({"cuda", unavailable_reason, [](const model::LlamaModel& model, const BackendOptions& options) {
                  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(model, options));
                }});
  registry.add({"hybrid", unavailable_reason, [](const model::LlamaModel& model, const BackendOptions& options) {
                  return std::unique_ptr<Backend>(std::make_unique<HybridBackend>(model, options));
                }});
  return true;
}();

}  // namespace
}  // namespace tessera::cuda
