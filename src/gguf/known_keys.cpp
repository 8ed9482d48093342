#include "gguf/known_keys.h"

#include <array>
#include <utility>

namespace tessera::gguf {
namespace {

enum class Expected { String, U32, F32, Bool, StringArray, F32Array, I32Array, U32OrIntArray };

// Types as llama.cpp's own writer (gguf-py) emits them and its loader demands them.
constexpr std::array<std::pair<std::string_view, Expected>, 21> kGeneralKeys = {{
    {"general.architecture", Expected::String},
    {"general.alignment", Expected::U32},
    {"general.name", Expected::String},
    {"general.file_type", Expected::U32},
    {"general.quantization_version", Expected::U32},
    {"tokenizer.ggml.model", Expected::String},
    {"tokenizer.ggml.pre", Expected::String},
    {"tokenizer.ggml.tokens", Expected::StringArray},
    {"tokenizer.ggml.scores", Expected::F32Array},
    {"tokenizer.ggml.token_type", Expected::I32Array},
    {"tokenizer.ggml.merges", Expected::StringArray},
    {"tokenizer.ggml.bos_token_id", Expected::U32},
    {"tokenizer.ggml.eos_token_id", Expected::U32},
    {"tokenizer.ggml.unknown_token_id", Expected::U32},
    {"tokenizer.ggml.padding_token_id", Expected::U32},
    {"tokenizer.ggml.seperator_token_id", Expected::U32},
    {"tokenizer.ggml.add_bos_token", Expected::Bool},
    {"tokenizer.ggml.add_eos_token", Expected::Bool},
    {"tokenizer.ggml.add_space_prefix", Expected::Bool},
    {"tokenizer.ggml.cls_token_id", Expected::U32},
    {"tokenizer.ggml.mask_token_id", Expected::U32},
}};

// Keys written as "<architecture>.<suffix>".
constexpr std::array<std::pair<std::string_view, Expected>, 14> kArchitectureKeys = {{
    {"context_length", Expected::U32},
    {"embedding_length", Expected::U32},
    {"block_count", Expected::U32},
    // Some newer models give one FFN width or head count per layer.
    {"feed_forward_length", Expected::U32OrIntArray},
    {"attention.head_count", Expected::U32OrIntArray},
    {"attention.head_count_kv", Expected::U32OrIntArray},
    {"rope.dimension_count", Expected::U32},
    {"vocab_size", Expected::U32},
    {"attention.layer_norm_rms_epsilon", Expected::F32},
    {"rope.freq_base", Expected::F32},
    {"rope.scaling.factor", Expected::F32},
    {"rope.scaling.type", Expected::String},
    {"attention.key_length", Expected::U32},
    {"attention.sliding_window", Expected::U32},
}};

bool matches(const Value& v, Expected expected) {
  switch (expected) {
    case Expected::String: return v.get_if<std::string>() != nullptr;
    case Expected::U32: return v.get_if<uint32_t>() != nullptr;
    case Expected::F32: return v.get_if<float>() != nullptr;
    case Expected::Bool: return v.get_if<bool>() != nullptr;
    case Expected::StringArray: return v.get_if<std::vector<std::string>>() != nullptr;
    case Expected::F32Array: return v.get_if<std::vector<float>>() != nullptr;
    case Expected::I32Array: return v.get_if<std::vector<int32_t>>() != nullptr;
    case Expected::U32OrIntArray:
      return v.get_if<uint32_t>() || v.get_if<std::vector<uint32_t>>() || v.get_if<std::vector<int32_t>>();
  }
  return false;
}

std::string_view describe(Expected expected) {
  switch (expected) {
    case Expected::String: return "string";
    case Expected::U32: return "u32";
    case Expected::F32: return "f32";
    case Expected::Bool: return "bool";
    case Expected::StringArray: return "array of string";
    case Expected::F32Array: return "array of f32";
    case Expected::I32Array: return "array of i32";
    case Expected::U32OrIntArray: return "u32 or an array of u32/i32";
  }
  return "";
}

}  // namespace

std::optional<std::string_view> known_key_type_problem(std::string_view key, const Value& value,
                                                       std::string_view architecture) {
  for (const auto& [known, expected] : kGeneralKeys)
    if (key == known) return matches(value, expected) ? std::nullopt : std::optional(describe(expected));
  if (architecture.empty() || key.size() <= architecture.size() + 1 || !key.starts_with(architecture) ||
      key[architecture.size()] != '.')
    return std::nullopt;
  const std::string_view suffix = key.substr(architecture.size() + 1);
  for (const auto& [known, expected] : kArchitectureKeys)
    if (suffix == known) return matches(value, expected) ? std::nullopt : std::optional(describe(expected));
  return std::nullopt;
}

}  // namespace tessera::gguf
