// Whole-model quantization the way llama-quantize does it for Llama models: presets (Q4_K_M, ...) mix tensor
// types per tensor, norms and other 1-D tensors stay as they are, and general.file_type says the preset.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/ggml_type.h"

namespace tessera::quant {

// llama-quantize's type names; values are llama.cpp's LLAMA_FTYPE numbers (general.file_type).
enum class ModelQuantType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, Q5_0 = 8, Q5_1 = 9, Q2_K = 10, Q3_K_S = 11, Q3_K_M = 12,
  Q3_K_L = 13, Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17, Q6_K = 18, BF16 = 32,
};

// "Q4_K_M" -> ModelQuantType::Q4_K_M; throws std::invalid_argument naming the accepted names otherwise.
ModelQuantType parse_model_quant_type(std::string_view name);
std::string_view model_quant_type_name(ModelQuantType type);
uint32_t file_type_id(ModelQuantType type);       // general.file_type
GgmlType default_tensor_type(ModelQuantType type);  // the type of most weight matrices

struct TensorToQuantize {
  std::string name;
  std::vector<uint64_t> shape;          // GGUF order: shape[0] is the row length
  GgmlType type = GgmlType::F32;        // current type, kept by tensors that are not quantized
};

// The type of each tensor under `type`, in the given (file) order: llama-quantize's rules for Llama models
// (output / tied token_embd -> Q6_K, attn_v and ffn_down bumped by layer for _M/_L/_S presets, ...). A row length
// that the chosen type's block does not divide falls back to a compatible type; each fallback is described in
// `notes` when given.
std::vector<GgmlType> choose_tensor_types(ModelQuantType type, const std::vector<TensorToQuantize>& tensors,
                                          int n_layer, std::vector<std::string>* notes = nullptr);

struct QuantizeProgress {
  size_t tensor_index = 0;  // the tensor just written, 0-based
  size_t n_tensors = 0;
  std::string name;
  GgmlType from = GgmlType::F32;
  GgmlType to = GgmlType::F32;
  uint64_t bytes_done = 0;   // output tensor bytes so far
  uint64_t bytes_total = 0;
};

struct QuantizeResult {
  uint64_t input_bytes = 0;   // tensor data
  uint64_t output_bytes = 0;
  std::vector<std::string> notes;  // fallbacks, one line each
};

// Reads `input` (GGUF), writes `output` through a temporary file and a rename. Refuses an input whose weight
// matrices are already quantized (anything but F32/F16/BF16) unless allow_requantize. n_threads <= 0: all cores.
QuantizeResult quantize_model(const std::string& input, const std::string& output, ModelQuantType type,
                              int n_threads, bool allow_requantize,
                              const std::function<void(const QuantizeProgress&)>& on_progress = {});

}  // namespace tessera::quant
