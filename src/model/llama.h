// The `llama` architecture (Llama 1/2/3, TinyLlama, CodeLlama, Mistral in llama form): hyper-parameters from the
// `llama.*` keys and typed, zero-copy views of the weights inside the GGUF mapping.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/ggml_type.h"
#include "gguf/gguf.h"

namespace tessera::model {

// A weight matrix as stored: n_rows rows of n_cols elements (GGUF ne0 = n_cols, ne1 = n_rows), each row
// row_bytes long in its block format. y = W x is a dot of every row with x.
struct MatrixView {
  std::string name;
  GgmlType type = GgmlType::F32;
  int64_t n_cols = 0;
  int64_t n_rows = 0;
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
  size_t bytes() const { return row_bytes * static_cast<size_t>(n_rows); }
};

struct RopeConfig {
  int n_dims = 0;            // rotated dimensions of each head (llama.rope.dimension_count; default head_dim)
  float freq_base = 10000;   // llama.rope.freq_base
  float freq_scale = 1;      // 1 / linear scaling factor (llama.rope.scaling.type = linear)
  std::vector<float> freq_factors;  // rope_freqs.weight (Llama 3.1 scaling), n_dims / 2 divisors, or empty
};

struct LlamaConfig {
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;    // n_embd / n_head
  int n_ff = 0;
  int n_ctx_train = 0;
  int sliding_window = 0;  // llama.attention.sliding_window: a token sees this many latest positions; 0: all
  float rms_eps = 1e-5f;
  RopeConfig rope;

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_head_kv * head_dim; }
};

struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  MatrixView wq;                     // [q_dim][n_embd]
  MatrixView wk;                     // [kv_dim][n_embd]
  MatrixView wv;                     // [kv_dim][n_embd]
  MatrixView wo;                     // [n_embd][q_dim]
  const float* ffn_norm = nullptr;   // [n_embd]
  MatrixView w_gate;                 // [n_ff][n_embd]
  MatrixView w_up;                   // [n_ff][n_embd]
  MatrixView w_down;                 // [n_embd][n_ff]

  // Its seven weight matrices, in the order the layer uses them.
  std::array<const MatrixView*, 7> matrices() const { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
};

struct LlamaModel {
  LlamaConfig config;
  MatrixView token_embd;               // [n_vocab][n_embd]
  const float* output_norm = nullptr;  // [n_embd]
  MatrixView output;                   // [n_vocab][n_embd]; token_embd when the file ties them
  bool tied_embeddings = false;
  std::vector<LlamaLayer> layers;
  const gguf::File* file = nullptr;    // where the weights live

  // Reads hyper-parameters and weight views. The File must outlive the model. Throws gguf::FormatError naming
  // the architecture, key or tensor that is missing or wrong (e.g. "missing tensor 'blk.3.ffn_up.weight'").
  static LlamaModel load(const gguf::File& file);

  // Bytes of all weights (what one decode step reads).
  uint64_t weight_bytes() const;
};

}  // namespace tessera::model
