#include "model/llama_reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "quant/quant.h"

namespace tessera::model {
namespace {

// ---- The KV cache formats' rounding, each written from the format's definition (its ggml code), in the float
// arithmetic that code uses: a simulation of what a backend stores, not a call into the backend's own code, so
// that a bug in the latter shows up as a difference.

constexpr int kQuantBlock = 32;  // values per scale in q8_0 and q4_0

double round_to_f16(double x) { return quant::fp16_to_fp32(quant::fp32_to_fp16(static_cast<float>(x))); }

double round_to_bf16(double x) { return quant::bf16_to_fp32(quant::fp32_to_bf16(static_cast<float>(x))); }

// One block of 32 values as q8_0 holds them, as llama.cpp's CPU code writes a q8_0 cache row or quantizes an
// activation: scale d = amax / 127 kept as f16, each value times the inverse 127 / amax (from the float amax, not
// from the rounded d) rounded to the nearest integer, ties to even.
void round_q8_0_block(double* x) {
  float v[kQuantBlock];
  float amax = 0;
  for (int j = 0; j < kQuantBlock; ++j) {
    v[j] = static_cast<float>(x[j]);
    amax = std::max(amax, std::fabs(v[j]));
  }
  const float d = static_cast<float>(round_to_f16(amax / 127)), inverse = amax != 0 ? 127 / amax : 0;
  for (int j = 0; j < kQuantBlock; ++j) x[j] = static_cast<double>(std::nearbyint(v[j] * inverse)) * d;
}

// One block of 32 values as q4_0 holds them, as ggml's reference quantizer writes it: the value of largest
// magnitude (the first, on a tie) maps to -8, so the scale d = extreme / -8 may be negative; each value times 1 / d
// plus 8.5, truncated and capped at 15, is its 4-bit code q, and it reads back as (q - 8) * d with d kept as f16.
void round_q4_0_block(double* x) {
  float v[kQuantBlock];
  float extreme = 0;
  for (int j = 0; j < kQuantBlock; ++j) {
    v[j] = static_cast<float>(x[j]);
    if (std::fabs(v[j]) > std::fabs(extreme)) extreme = v[j];
  }
  const float d = extreme / -8, inverse = d != 0 ? 1 / d : 0;
  const double stored_d = round_to_f16(d);
  for (int j = 0; j < kQuantBlock; ++j) {
    const int q = std::min(15, static_cast<int>(static_cast<int8_t>(v[j] * inverse + 8.5f)));
    x[j] = (q - 8) * stored_d;
  }
}

bool is_quantized(KvRounding r) { return r == KvRounding::Q8_0 || r == KvRounding::Q4_0; }

// A token's key or value row, (n_head_kv, head_dim), as a cache of `rounding` stores it. The quantized formats'
// blocks are 32 consecutive values of the row: within a head, or across heads where head_dim < 32 (the
// constructor checked that the row is whole blocks).
void round_cache_row(KvRounding rounding, std::vector<double>& row) {
  switch (rounding) {
    case KvRounding::None: return;
    case KvRounding::F32:
      for (double& v : row) v = static_cast<float>(v);
      return;
    case KvRounding::F16:
      for (double& v : row) v = round_to_f16(v);
      return;
    case KvRounding::BF16:
      for (double& v : row) v = round_to_bf16(v);
      return;
    case KvRounding::Q8_0:
      for (size_t b = 0; b < row.size(); b += kQuantBlock) round_q8_0_block(&row[b]);
      return;
    case KvRounding::Q4_0:
      for (size_t b = 0; b < row.size(); b += kQuantBlock) round_q4_0_block(&row[b]);
      return;
  }
}

// Whether the query and the softmax weights are rounded to f16: the backends (as ggml) take the f16 dot products
// only where keys and values are both f16; with one of them in another format they keep the query and the weights
// in float.
bool f16_attention(const KvRoundings& r) { return r.k == KvRounding::F16 && r.v == KvRounding::F16; }

// The query, (n_head, head_dim), as attention meets the keys: rounded to f16 for f16 keys and values (see
// f16_attention); for quantized keys, quantized to q8_0 head by head, since their integer dot products take a q8_0
// activation. Where head_dim < 32 a head's query is one block with zeros for the other heads of the key row (it
// meets a block that spans heads), so its scale is its own. Otherwise the query is kept as it is.
void round_query(const KvRoundings& r, std::vector<double>& q, int n_head, int head_dim) {
  if (f16_attention(r)) {
    for (double& v : q) v = round_to_f16(v);
  } else if (is_quantized(r.k)) {
    const int padded = (head_dim + kQuantBlock - 1) / kQuantBlock * kQuantBlock;
    std::vector<double> head(padded);
    for (int h = 0; h < n_head; ++h) {
      std::fill(head.begin(), head.end(), 0.0);
      std::copy_n(&q[h * head_dim], head_dim, head.begin());
      for (int b = 0; b < padded; b += kQuantBlock) round_q8_0_block(&head[b]);
      std::copy_n(head.begin(), head_dim, &q[h * head_dim]);
    }
  }
}

// ---- The forward pass's steps.

// y = W x. W: (n_rows, n_cols) in its block format, each row dequantized as it is read; x: (n_cols); y: (n_rows).
void matvec(const MatrixView& w, const double* x, double* y) {
  std::vector<float> row(w.n_cols);
  for (int64_t r = 0; r < w.n_rows; ++r) {
    quant::dequantize_row_ref(w.type, w.row(r), row.data(), w.n_cols);
    double sum = 0;
    for (int64_t c = 0; c < w.n_cols; ++c) sum += row[c] * x[c];
    y[r] = sum;
  }
}

// y = x / sqrt(mean(x^2) + eps) * weight. x, weight, y: (n).
void rms_norm(const double* x, const float* weight, int n, double eps, double* y) {
  double sum_of_squares = 0;
  for (int i = 0; i < n; ++i) sum_of_squares += x[i] * x[i];
  const double scale = 1.0 / std::sqrt(sum_of_squares / n + eps);
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * weight[i];
}

// Rotates the pairs (2i, 2i+1), i < n_dims / 2, of each head by the angle
//   position * freq_scale * freq_base^(-2i / n_dims) / freq_factors[i]
// (llama.cpp's "normal" RoPE, with linear and Llama 3 scaling); dimensions past n_dims stay as they are. The CPU
// backend's rope_angles computes the same angle in float, as llama.cpp does. x: (n_heads, head_dim).
void rope(double* x, int n_heads, int head_dim, const RopeConfig& rope, int32_t position) {
  for (int i = 0; i < rope.n_dims / 2; ++i) {
    const double factor = rope.freq_factors.empty() ? 1.0 : rope.freq_factors[i];
    const double frequency = std::pow(static_cast<double>(rope.freq_base), -2.0 * i / rope.n_dims);
    const double angle = position * frequency * rope.freq_scale / factor;
    const double cos = std::cos(angle), sin = std::sin(angle);
    for (int h = 0; h < n_heads; ++h) {
      double& a = x[h * head_dim + 2 * i];
      double& b = x[h * head_dim + 2 * i + 1];
      const double a0 = a, b0 = b;
      a = a0 * cos - b0 * sin;
      b = a0 * sin + b0 * cos;
    }
  }
}

// out = silu(gate) * up, written over gate. gate, up: (n).
void swiglu(double* gate, const double* up, int n) {
  for (int i = 0; i < n; ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
}

// Whether a token at `position` sees the key at position j (StepPlan::Run's sliding window with sinks).
bool visible(int32_t j, int32_t position, const ReferenceOptions& o) {
  return j <= position && (o.window == 0 || j > position - o.window || j < o.n_sink);
}

}  // namespace

LlamaReference::LlamaReference(const LlamaModel& model, const ReferenceOptions& options)
    : model_(model), options_(options) {
  const LlamaConfig& c = model.config;
  x_.resize(c.n_embd);
  xb_.resize(c.n_embd);
  q_.resize(c.q_dim());
  k_.resize(c.kv_dim());
  v_.resize(c.kv_dim());
  attn_.resize(c.q_dim());
  proj_.resize(c.n_embd);
  gate_.resize(c.n_ff);
  up_.resize(c.n_ff);
  logits_.resize(c.n_vocab);
  for (const KvRounding r : {options.kv_rounding.k, options.kv_rounding.v}) {
    const bool whole_blocks =
        c.head_dim % kQuantBlock == 0 || (kQuantBlock % c.head_dim == 0 && c.kv_dim() % kQuantBlock == 0);
    if (is_quantized(r) && !whole_blocks) {
      throw std::invalid_argument("a quantized KV rounding needs blocks of 32 that fit the KV heads: head_dim " +
                                  std::to_string(c.head_dim) + ", " + std::to_string(c.n_head_kv) + " KV heads");
    }
  }
  key_cache_.resize(c.n_layer);
  value_cache_.resize(c.n_layer);
}

// RMSNorm -> q, k, v -> RoPE -> k, v into the cache -> each query head attends over the keys it sees (its KV
// head's, shared by n_head / n_head_kv query heads) -> output projection -> residual.
void LlamaReference::attention_block(int layer) {
  const LlamaConfig& c = model_.config;
  const LlamaLayer& w = model_.layers[layer];
  const int hd = c.head_dim, kv_dim = c.kv_dim(), group = c.n_head / c.n_head_kv;
  const int32_t position = n_past_;
  const bool f16_weights = f16_attention(options_.kv_rounding);

  rms_norm(x_.data(), w.attn_norm, c.n_embd, c.rms_eps, xb_.data());
  matvec(w.wq, xb_.data(), q_.data());
  matvec(w.wk, xb_.data(), k_.data());
  matvec(w.wv, xb_.data(), v_.data());
  rope(q_.data(), c.n_head, hd, c.rope, position);
  rope(k_.data(), c.n_head_kv, hd, c.rope, position);
  round_query(options_.kv_rounding, q_, c.n_head, hd);
  round_cache_row(options_.kv_rounding.k, k_);
  round_cache_row(options_.kv_rounding.v, v_);
  std::vector<double>& keys = key_cache_[layer];
  std::vector<double>& values = value_cache_[layer];
  keys.insert(keys.end(), k_.begin(), k_.end());
  values.insert(values.end(), v_.begin(), v_.end());

  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  scores_.resize(position + 1);
  for (int h = 0; h < c.n_head; ++h) {
    const double* q = &q_[h * hd];
    const int kv_offset = (h / group) * hd;
    double max_score = -INFINITY;
    for (int32_t j = 0; j <= position; ++j) {
      if (!visible(j, position, options_)) continue;
      const double* k = &keys[j * kv_dim + kv_offset];
      double dot = 0;
      for (int d = 0; d < hd; ++d) dot += q[d] * k[d];
      scores_[j] = dot * scale;
      max_score = std::max(max_score, scores_[j]);
    }
    double sum = 0;
    for (int32_t j = 0; j <= position; ++j) {
      scores_[j] = visible(j, position, options_) ? std::exp(scores_[j] - max_score) : 0.0;
      sum += scores_[j];
    }
    double* out = &attn_[h * hd];
    std::fill(out, out + hd, 0.0);
    for (int32_t j = 0; j <= position; ++j) {
      const double weight = f16_weights ? round_to_f16(scores_[j] / sum) : scores_[j] / sum;
      const double* v = &values[j * kv_dim + kv_offset];
      for (int d = 0; d < hd; ++d) out[d] += weight * v[d];
    }
  }
  matvec(w.wo, attn_.data(), proj_.data());
  for (int i = 0; i < c.n_embd; ++i) x_[i] += proj_[i];
}

// RMSNorm -> silu(gate) * up -> down projection -> residual.
void LlamaReference::feed_forward_block(int layer) {
  const LlamaConfig& c = model_.config;
  const LlamaLayer& w = model_.layers[layer];
  rms_norm(x_.data(), w.ffn_norm, c.n_embd, c.rms_eps, xb_.data());
  matvec(w.w_gate, xb_.data(), gate_.data());
  matvec(w.w_up, xb_.data(), up_.data());
  swiglu(gate_.data(), up_.data(), c.n_ff);
  matvec(w.w_down, gate_.data(), proj_.data());
  for (int i = 0; i < c.n_embd; ++i) x_[i] += proj_[i];
}

const std::vector<double>& LlamaReference::forward(int32_t token) {
  const LlamaConfig& c = model_.config;
  if (token < 0 || token >= c.n_vocab) {
    throw std::invalid_argument("token " + std::to_string(token) + " is outside the vocabulary of " +
                                std::to_string(c.n_vocab));
  }
  std::vector<float> row(c.n_embd);
  quant::dequantize_row_ref(model_.token_embd.type, model_.token_embd.row(token), row.data(), c.n_embd);
  std::copy(row.begin(), row.end(), x_.begin());
  for (int layer = 0; layer < c.n_layer; ++layer) {
    attention_block(layer);
    feed_forward_block(layer);
  }
  rms_norm(x_.data(), model_.output_norm, c.n_embd, c.rms_eps, xb_.data());
  matvec(model_.output, xb_.data(), logits_.data());
  ++n_past_;
  return logits_;
}

std::vector<double> reference_logits(const LlamaModel& model, std::span<const int32_t> tokens,
                                     const ReferenceOptions& options) {
  LlamaReference reference(model, options);
  std::vector<double> logits;
  logits.reserve(tokens.size() * static_cast<size_t>(model.config.n_vocab));
  for (const int32_t token : tokens) {
    const std::vector<double>& row = reference.forward(token);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

}  // namespace tessera::model
