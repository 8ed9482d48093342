#include "model/llama.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

namespace tessera::model {
namespace {

using gguf::FormatError;

constexpr int kMaxHeadDim = 512;  // the CPU attention keeps one head's query on the stack

int required_int(const gguf::File& file, const std::string& key, int64_t min_value) {
  const std::optional<int64_t> v = file.get_int(key);
  if (!v) throw FormatError(fmt::format("missing metadata key '{}'", key));
  if (*v < min_value || *v > std::numeric_limits<int32_t>::max()) {
    throw FormatError(fmt::format("metadata key '{}' has invalid value {}", key, *v));
  }
  return static_cast<int>(*v);
}

// A count that newer GGUF files may give per layer (an array of n_layer integers, as llama.cpp writes for models
// whose layers differ): accepted when every layer has the same value, which is all the llama graph here supports.
std::optional<int> per_layer_int(const gguf::File& file, const std::string& key, int64_t min_value, int n_layer) {
  const gguf::Value* v = file.find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) return required_int(file, key, min_value);
  const std::vector<int64_t> values = *file.get_int_array(key);
  if (values.size() != static_cast<size_t>(n_layer)) {
    throw FormatError(
        fmt::format("metadata key '{}' has {} per-layer values for {} layers", key, values.size(), n_layer));
  }
  for (size_t l = 0; l < values.size(); ++l) {
    if (values[l] < min_value || values[l] > std::numeric_limits<int32_t>::max()) {
      throw FormatError(fmt::format("metadata key '{}' has invalid value {} for layer {}", key, values[l], l));
    }
    if (values[l] != values[0]) {
      throw FormatError(fmt::format("metadata key '{}' differs between layers ({} in layer 0, {} in layer {}); "
                                    "only models whose layers all have the same shape are supported",
                                    key, values[0], values[l], l));
    }
  }
  return static_cast<int>(values[0]);
}

const gguf::TensorInfo& find_tensor(const gguf::File& file, const std::string& name) {
  const gguf::TensorInfo* t = file.find_tensor(name);
  if (!t) throw FormatError(fmt::format("missing tensor '{}'", name));
  return *t;
}

void check_computable(const gguf::TensorInfo& t) {
  const GgmlTypeTraits& traits = ggml_type_traits(t.type);
  if (!traits.computable) {
    throw FormatError(fmt::format("tensor '{}' has type {}, not supported yet", t.name, traits.name));
  }
}

MatrixView matrix(const gguf::File& file, const std::string& name, int64_t n_cols, int64_t n_rows) {
  const gguf::TensorInfo& t = find_tensor(file, name);
  if (t.shape.size() != 2 || static_cast<int64_t>(t.shape[0]) != n_cols ||
      static_cast<int64_t>(t.shape[1]) != n_rows) {
    std::string shape;
    for (uint64_t d : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    throw FormatError(
        fmt::format("tensor '{}' has shape [{}], expected [{}, {}]", name, shape, n_cols, n_rows));
  }
  check_computable(t);
  MatrixView m;
  m.name = name;
  m.type = t.type;
  m.n_cols = n_cols;
  m.n_rows = n_rows;
  m.row_bytes = ggml_row_bytes(t.type, static_cast<uint64_t>(n_cols));
  m.data = t.data;
  return m;
}

// A float hyper-parameter that must be a positive finite number (an infinite epsilon or RoPE base makes every
// output NaN without a word).
float positive_finite(const gguf::File& file, const std::string& key, double fallback) {
  const double v = file.get_float(key).value_or(fallback);
  const float f = static_cast<float>(v);
  if (!(f > 0) || !std::isfinite(f)) {
    throw FormatError(fmt::format("metadata key '{}' has value {}; it must be a positive finite number", key, v));
  }
  return f;
}

void check_finite(const float* values, int64_t n, const std::string& name) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) {
      throw FormatError(fmt::format("tensor '{}' holds {} at index {}", name, values[i], i));
    }
  }
}

const float* norm_vector(const gguf::File& file, const std::string& name, int64_t n) {
  const gguf::TensorInfo& t = find_tensor(file, name);
  if (t.shape.size() != 1 || static_cast<int64_t>(t.shape[0]) != n) {
    throw FormatError(fmt::format("tensor '{}' should be a vector of {} values", name, n));
  }
  if (t.type != GgmlType::F32) {
    throw FormatError(fmt::format("tensor '{}' has type {}; norm weights must be F32", name, ggml_type_name(t.type)));
  }
  const float* values = reinterpret_cast<const float*>(t.data);
  check_finite(values, n, name);
  return values;
}

}  // namespace

LlamaModel LlamaModel::load(const gguf::File& file) {
  const std::string arch = file.architecture();
  if (arch.empty()) throw FormatError("missing metadata key 'general.architecture'");
  if (arch != "llama") throw FormatError(fmt::format("unsupported architecture '{}' (supported: llama)", arch));

  LlamaModel m;
  m.file = &file;
  LlamaConfig& c = m.config;
  c.n_embd = required_int(file, "llama.embedding_length", 1);
  c.n_layer = required_int(file, "llama.block_count", 1);
  const std::optional<int> n_head = per_layer_int(file, "llama.attention.head_count", 1, c.n_layer);
  if (!n_head) throw FormatError("missing metadata key 'llama.attention.head_count'");
  c.n_head = *n_head;
  c.n_head_kv = per_layer_int(file, "llama.attention.head_count_kv", 1, c.n_layer).value_or(c.n_head);
  const std::optional<int> n_ff = per_layer_int(file, "llama.feed_forward_length", 1, c.n_layer);
  if (!n_ff) throw FormatError("missing metadata key 'llama.feed_forward_length'");
  c.n_ff = *n_ff;
  c.n_ctx_train = required_int(file, "llama.context_length", 1);
  if (file.get_int("llama.attention.sliding_window")) {
    c.sliding_window = required_int(file, "llama.attention.sliding_window", 0);
  }
  c.rms_eps = positive_finite(file, "llama.attention.layer_norm_rms_epsilon", 1e-5);
  // The embedding length decides the head dimension below: a wrong one must be named here, not as a RoPE mismatch.
  if (const gguf::TensorInfo* embd = file.find_tensor("token_embd.weight");
      embd && !embd->shape.empty() && embd->shape[0] != static_cast<uint64_t>(c.n_embd)) {
    throw FormatError(fmt::format("metadata key 'llama.embedding_length' is {} but the rows of tensor "
                                  "'token_embd.weight' have {} values",
                                  c.n_embd, embd->shape[0]));
  }
  if (c.n_embd % c.n_head != 0) {
    throw FormatError(fmt::format("embedding length {} is not a multiple of head count {}", c.n_embd, c.n_head));
  }
  if (c.n_head % c.n_head_kv != 0) {
    throw FormatError(fmt::format("head count {} is not a multiple of KV head count {}", c.n_head, c.n_head_kv));
  }
  c.head_dim = file.get_int("llama.attention.key_length") ? required_int(file, "llama.attention.key_length", 1)
                                                         : c.n_embd / c.n_head;
  if (c.head_dim > kMaxHeadDim || c.head_dim % 2 != 0) {
    throw FormatError(fmt::format("head dimension {} is not supported (even, at most {})", c.head_dim, kMaxHeadDim));
  }

  RopeConfig& rope = c.rope;
  rope.n_dims = file.get_int("llama.rope.dimension_count") ? required_int(file, "llama.rope.dimension_count", 2)
                                                          : c.head_dim;
  if (rope.n_dims > c.head_dim || rope.n_dims % 2 != 0) {
    const std::string head_dim_source =
        file.get_int("llama.attention.key_length")
            ? "llama.attention.key_length"
            : fmt::format("embedding length {} / head count {}", c.n_embd, c.n_head);
    throw FormatError(fmt::format("RoPE dimension count {} does not fit head dimension {} ({})", rope.n_dims,
                                  c.head_dim, head_dim_source));
  }
  rope.freq_base = positive_finite(file, "llama.rope.freq_base", 10000.0);
  const std::string scaling = file.get_string("llama.rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    rope.freq_scale = 1.0f / positive_finite(file, "llama.rope.scaling.factor", 1.0);
  } else if (scaling != "none" && scaling != "llama3") {
    throw FormatError(fmt::format("RoPE scaling type '{}' is not supported", scaling));
  }
  if (const gguf::TensorInfo* freqs = file.find_tensor("rope_freqs.weight")) {
    if (freqs->type != GgmlType::F32 || freqs->n_elements != static_cast<uint64_t>(rope.n_dims / 2)) {
      throw FormatError(fmt::format("tensor 'rope_freqs.weight' should be {} F32 values", rope.n_dims / 2));
    }
    const float* f = reinterpret_cast<const float*>(freqs->data);
    check_finite(f, rope.n_dims / 2, "rope_freqs.weight");
    rope.freq_factors.assign(f, f + rope.n_dims / 2);
  }

  const gguf::TensorInfo& embd = find_tensor(file, "token_embd.weight");
  if (embd.shape.size() != 2) throw FormatError("tensor 'token_embd.weight' should have 2 dimensions");
  if (embd.shape[1] > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    throw FormatError("tensor 'token_embd.weight' has too many rows");
  }
  c.n_vocab = static_cast<int>(embd.shape[1]);
  // Every token id the tokenizer gives must have an embedding row and every logit a token: a mismatch would
  // otherwise show only when generation reaches such an id.
  if (const std::vector<std::string>* tokens = file.get_string_array("tokenizer.ggml.tokens");
      tokens && tokens->size() != static_cast<size_t>(c.n_vocab)) {
    throw FormatError(fmt::format("the vocabulary (tokenizer.ggml.tokens) has {} tokens but tensor "
                                  "'token_embd.weight' has {} rows, one per token",
                                  tokens->size(), c.n_vocab));
  }
  m.token_embd = matrix(file, "token_embd.weight", c.n_embd, c.n_vocab);
  m.output_norm = norm_vector(file, "output_norm.weight", c.n_embd);
  m.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  m.output = m.tied_embeddings ? m.token_embd : matrix(file, "output.weight", c.n_embd, c.n_vocab);

  m.layers.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; ++il) {
    const std::string p = fmt::format("blk.{}.", il);
    LlamaLayer& l = m.layers[il];
    l.attn_norm = norm_vector(file, p + "attn_norm.weight", c.n_embd);
    l.wq = matrix(file, p + "attn_q.weight", c.n_embd, c.q_dim());
    l.wk = matrix(file, p + "attn_k.weight", c.n_embd, c.kv_dim());
    l.wv = matrix(file, p + "attn_v.weight", c.n_embd, c.kv_dim());
    l.wo = matrix(file, p + "attn_output.weight", c.q_dim(), c.n_embd);
    l.ffn_norm = norm_vector(file, p + "ffn_norm.weight", c.n_embd);
    l.w_gate = matrix(file, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    l.w_up = matrix(file, p + "ffn_up.weight", c.n_embd, c.n_ff);
    l.w_down = matrix(file, p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  return m;
}

uint64_t LlamaModel::weight_bytes() const {
  uint64_t total = token_embd.bytes() + (tied_embeddings ? 0 : output.bytes());
  total += static_cast<uint64_t>(config.n_embd) * sizeof(float) * (1 + 2 * layers.size());
  for (const LlamaLayer& l : layers) {
    for (const MatrixView* w : l.matrices()) total += w->bytes();
  }
  return total;
}

}  // namespace tessera::model
