#include "backend/cuda/gpu_weights.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_layout.h"

namespace tessera::cuda {
namespace {

constexpr size_t kAlign = 256;
constexpr size_t kStagingBytes = 8u << 20;  // host buffer for rows rewritten into the device layout

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t device_bytes(const model::MatrixView& m) {
  return device_row_bytes(m.type, m.n_cols) * static_cast<size_t>(m.n_rows);
}

void check_matrix(const model::MatrixView& m) {
  if (!supports_type(m.type)) {
    throw std::runtime_error(
        fmt::format("tensor '{}' has type {}, which the CUDA backend cannot multiply", m.name, ggml_type_name(m.type)));
  }
  if (m.n_cols % column_granule(m.type) != 0) {
    throw std::runtime_error(fmt::format("tensor '{}' has {} columns; the CUDA kernels for {} need a multiple of {}",
                                         m.name, m.n_cols, ggml_type_name(m.type), column_granule(m.type)));
  }
}

}  // namespace

GpuWeights::GpuWeights(const model::LlamaModel& model, int n_layers, bool with_output)
    : model_(model), n_layers_(n_layers), with_output_(with_output) {
  std::vector<const model::MatrixView*> matrices;
  for (int il = 0; il < n_layers_; ++il) {
    for (const model::MatrixView* m : model.layers[il].matrices()) matrices.push_back(m);
  }
  matrices.push_back(&model.token_embd);
  if (with_output_ && !model.tied_embeddings) matrices.push_back(&model.output);
  const size_t norm_bytes = static_cast<size_t>(model.config.n_embd) * sizeof(float);
  for (const model::MatrixView* m : matrices) {
    check_matrix(*m);
    bytes_ += align_up(device_bytes(*m));
    largest_matrix_ = std::max(largest_matrix_, m->n_rows * m->n_cols);
  }
  bytes_ += static_cast<uint64_t>(n_layers_) * 2 * align_up(norm_bytes) + align_up(norm_bytes) +
            align_up(model.config.rope.freq_factors.size() * sizeof(float) + 4);
}

GpuWeights::~GpuWeights() { cudaFree(arena_); }

void GpuWeights::upload() {
  TESSERA_CUDA_CHECK(cudaMalloc(&arena_, bytes_));
  auto* base = static_cast<uint8_t*>(arena_);
  size_t offset = 0;
  auto reserve = [&](size_t bytes) {
    uint8_t* dst = base + offset;
    offset = align_up(offset + bytes);
    return dst;
  };
  auto copy = [&](const void* src, size_t bytes) {
    uint8_t* dst = reserve(bytes);
    TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return dst;
  };
  std::vector<uint8_t> staging;
  auto matrix = [&](const model::MatrixView& m) {
    DeviceMatrix d{m.type, nullptr, device_row_bytes(m.type, m.n_cols), m.n_cols, m.n_rows};
    if (keeps_file_layout(m.type)) {
      d.data = copy(m.data, m.bytes());
      return d;
    }
    // Rewritten a slice of rows at a time, so that the staging buffer stays small.
    uint8_t* dst = reserve(device_bytes(m));
    const int64_t slice_rows = std::max<int64_t>(1, static_cast<int64_t>(kStagingBytes / d.row_bytes));
    staging.resize(static_cast<size_t>(std::min(slice_rows, m.n_rows)) * d.row_bytes);
    for (int64_t r = 0; r < m.n_rows; r += slice_rows) {
      const int64_t n = std::min(slice_rows, m.n_rows - r);
      to_device_layout(m.type, m.row(r), n, m.n_cols, staging.data());
      TESSERA_CUDA_CHECK(cudaMemcpy(dst + static_cast<size_t>(r) * d.row_bytes, staging.data(),
                                    static_cast<size_t>(n) * d.row_bytes, cudaMemcpyHostToDevice));
    }
    d.data = dst;
    return d;
  };
  const size_t norm_bytes = static_cast<size_t>(model_.config.n_embd) * sizeof(float);
  layers_.resize(n_layers_);
  for (int il = 0; il < n_layers_; ++il) {
    const model::LlamaLayer& l = model_.layers[il];
    Layer& d = layers_[il];
    d.wq = matrix(l.wq);
    d.wk = matrix(l.wk);
    d.wv = matrix(l.wv);
    d.wo = matrix(l.wo);
    d.w_gate = matrix(l.w_gate);
    d.w_up = matrix(l.w_up);
    d.w_down = matrix(l.w_down);
    d.attn_norm = reinterpret_cast<const float*>(copy(l.attn_norm, norm_bytes));
    d.ffn_norm = reinterpret_cast<const float*>(copy(l.ffn_norm, norm_bytes));
  }
  token_embd_ = matrix(model_.token_embd);
  if (with_output_) {
    output_ = model_.tied_embeddings ? token_embd_ : matrix(model_.output);
    output_norm_ = reinterpret_cast<const float*>(copy(model_.output_norm, norm_bytes));
  }
  const std::vector<float>& factors = model_.config.rope.freq_factors;
  if (!factors.empty()) freq_factors_ = reinterpret_cast<const float*>(copy(factors.data(), factors.size() * sizeof(float)));
}

}  // namespace tessera::cuda
