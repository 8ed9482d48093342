// A model's weights in device memory: one allocation, each matrix in its block format (device_layout.h), norms
// and RoPE frequency factors as f32. The size is known before anything is allocated, so that the caller can
// compare it, with everything else it needs, against the GPU's free memory first.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/kernels.h"
#include "model/llama.h"

namespace tessera::cuda {

class GpuWeights {
 public:
  struct Layer {
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    DeviceMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
  };

  // Layers [0, n_layers) and the token embedding; with_output also the final norm and the output matrix. Throws
  // std::runtime_error naming a matrix that the CUDA kernels cannot multiply.
  GpuWeights(const model::LlamaModel& model, int n_layers, bool with_output);
  ~GpuWeights();
  GpuWeights(const GpuWeights&) = delete;
  GpuWeights& operator=(const GpuWeights&) = delete;

  uint64_t bytes() const { return bytes_; }
  int64_t largest_matrix_elements() const { return largest_matrix_; }
  // Allocates and copies everything (rewriting rows into the device layout through a small host buffer).
  void upload();

  const Layer& layer(int il) const { return layers_[il]; }
  const DeviceMatrix& token_embd() const { return token_embd_; }
  const DeviceMatrix& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const float* freq_factors() const { return freq_factors_; }  // null when the model has none

 private:
  const model::LlamaModel& model_;
  int n_layers_;
  bool with_output_;
  uint64_t bytes_ = 0;
  int64_t largest_matrix_ = 0;
  void* arena_ = nullptr;
  std::vector<Layer> layers_;
  DeviceMatrix token_embd_, output_;
  const float* output_norm_ = nullptr;
  const float* freq_factors_ = nullptr;
};

}  // namespace tessera::cuda
