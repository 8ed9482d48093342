// A llama model of random f32 weights written with our GGUF writer, and its forward pass written here from the
// definition of the architecture in double precision: the reference the engine's backends are checked against
// (tests/model on the CPU, tests/cuda on the GPU). It can round keys, values and queries the way each KV cache
// format does (an f64 simulation of that rounding, written from the formats' definitions), and apply a sliding
// window's mask.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/kv_format.h"
#include "gguf/gguf.h"
#include "model/llama.h"
#include "quant/quant.h"

namespace tessera::test {

struct Shape {
  int n_vocab = 61, n_embd = 32, n_layer = 2, n_head = 4, n_head_kv = 1, n_ff = 40;
  bool tied = true;
  float rope_base = 10000;
  bool per_layer_counts = false;  // head counts and FFN width as one value per layer, as newer GGUF files may
  float weight_std = 0.2f;
};

struct Weights {
  std::vector<float> token_embd, output, output_norm;
  struct Layer {
    std::vector<float> attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down;
  };
  std::vector<Layer> layers;
};

inline Weights random_weights(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, s.weight_std);
  auto make = [&](size_t n, float mean = 0) {
    std::vector<float> v(n);
    for (float& x : v) x = mean + normal(rng);
    return v;
  };
  const int hd = s.n_embd / s.n_head, kv = s.n_head_kv * hd;
  Weights w;
  w.token_embd = make(static_cast<size_t>(s.n_vocab) * s.n_embd);
  if (!s.tied) w.output = make(static_cast<size_t>(s.n_vocab) * s.n_embd);
  w.output_norm = make(s.n_embd, 1.0f);
  for (int l = 0; l < s.n_layer; ++l) {
    w.layers.push_back({make(s.n_embd, 1.0f), make(s.n_embd * s.n_embd), make(static_cast<size_t>(kv) * s.n_embd),
                        make(static_cast<size_t>(kv) * s.n_embd), make(s.n_embd * s.n_embd), make(s.n_embd, 1.0f),
                        make(static_cast<size_t>(s.n_ff) * s.n_embd), make(static_cast<size_t>(s.n_ff) * s.n_embd),
                        make(static_cast<size_t>(s.n_embd) * s.n_ff)});
  }
  return w;
}

// edit (optional) changes the metadata before the tensors are added.
inline std::vector<uint8_t> write_model(const Shape& s, const Weights& w,
                                 const std::function<void(gguf::Writer&)>& edit = nullptr) {
  gguf::Writer out;
  out.set("general.architecture", "llama");
  out.set("llama.context_length", uint32_t{256});
  out.set("llama.embedding_length", static_cast<uint32_t>(s.n_embd));
  out.set("llama.block_count", static_cast<uint32_t>(s.n_layer));
  if (s.per_layer_counts) {
    out.set("llama.feed_forward_length", std::vector<int32_t>(s.n_layer, s.n_ff));
    out.set("llama.attention.head_count", std::vector<uint32_t>(s.n_layer, s.n_head));
    out.set("llama.attention.head_count_kv", std::vector<int32_t>(s.n_layer, s.n_head_kv));
  } else {
    out.set("llama.feed_forward_length", static_cast<uint32_t>(s.n_ff));
    out.set("llama.attention.head_count", static_cast<uint32_t>(s.n_head));
    out.set("llama.attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
  }
  out.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  out.set("llama.rope.freq_base", s.rope_base);
  if (edit) edit(out);
  auto bytes = [](const std::vector<float>& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float));
  };
  const uint64_t E = s.n_embd, hd = s.n_embd / s.n_head, kv = s.n_head_kv * hd, F = s.n_ff;
  out.add_tensor("token_embd.weight", GgmlType::F32, {E, static_cast<uint64_t>(s.n_vocab)}, bytes(w.token_embd));
  out.add_tensor("output_norm.weight", GgmlType::F32, {E}, bytes(w.output_norm));
  if (!s.tied) out.add_tensor("output.weight", GgmlType::F32, {E, static_cast<uint64_t>(s.n_vocab)}, bytes(w.output));
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const Weights::Layer& L = w.layers[l];
    out.add_tensor(p + "attn_norm.weight", GgmlType::F32, {E}, bytes(L.attn_norm));
    out.add_tensor(p + "attn_q.weight", GgmlType::F32, {E, E}, bytes(L.wq));
    out.add_tensor(p + "attn_k.weight", GgmlType::F32, {E, kv}, bytes(L.wk));
    out.add_tensor(p + "attn_v.weight", GgmlType::F32, {E, kv}, bytes(L.wv));
    out.add_tensor(p + "attn_output.weight", GgmlType::F32, {E, E}, bytes(L.wo));
    out.add_tensor(p + "ffn_norm.weight", GgmlType::F32, {E}, bytes(L.ffn_norm));
    out.add_tensor(p + "ffn_gate.weight", GgmlType::F32, {E, F}, bytes(L.gate));
    out.add_tensor(p + "ffn_up.weight", GgmlType::F32, {E, F}, bytes(L.up));
    out.add_tensor(p + "ffn_down.weight", GgmlType::F32, {F, E}, bytes(L.down));
  }
  return out.to_bytes();
}

// y = W x for W stored as rows of n_cols.
inline std::vector<double> matvec(const std::vector<float>& w, const std::vector<double>& x, size_t n_rows) {
  const size_t n_cols = x.size();
  std::vector<double> y(n_rows, 0.0);
  for (size_t r = 0; r < n_rows; ++r) {
    for (size_t c = 0; c < n_cols; ++c) y[r] += static_cast<double>(w[r * n_cols + c]) * x[c];
  }
  return y;
}

inline std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<float>& weight) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / x.size() + 1e-5);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * weight[i];
  return y;
}

inline void rope(std::vector<double>& v, int n_heads, int hd, int pos, double base) {
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < hd / 2; ++i) {
      const double angle = pos * std::pow(base, -2.0 * i / hd);
      double& a = v[h * hd + 2 * i];
      double& b = v[h * hd + 2 * i + 1];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(angle) - b0 * std::sin(angle);
      b = a0 * std::sin(angle) + b0 * std::cos(angle);
    }
  }
}

// How the reference keeps keys and values: exactly, or rounded as a KV cache format stores them (written here
// from the formats' definitions), with the query rounded as that format's attention meets it.
struct ReferenceOptions {
  KvFormat cache = KvFormat::F32;
  int window = 0;  // a token at p sees keys j <= p with j > p - window (0: all), or j < n_sink
  int n_sink = 0;
};

inline float to_f16(float x) { return quant::fp16_to_fp32(quant::fp32_to_fp16(x)); }

// Rounds consecutive blocks of 32 values in place: Q8_0 as llama.cpp's CPU code writes a q8_0 cache (scale
// amax / 127 kept as f16, inverse 127 / amax, ties to even); Q4_0 as ggml's reference (the value of largest
// magnitude maps to -8, scale kept as f16, +8.5 truncated, at most 15).
inline void round_blocks(KvFormat format, std::vector<double>& x) {
  for (size_t b = 0; b < x.size(); b += 32) {
    float v[32];
    for (int j = 0; j < 32; ++j) v[j] = static_cast<float>(x[b + j]);
    if (format == KvFormat::Q8_0) {
      float amax = 0;
      for (float f : v) amax = std::max(amax, std::fabs(f));
      const float d = to_f16(amax / 127), id = amax != 0 ? 127 / amax : 0;
      for (int j = 0; j < 32; ++j) x[b + j] = static_cast<double>(std::nearbyint(v[j] * id)) * d;
    } else {
      float extreme = 0;
      for (float f : v) extreme = std::fabs(f) > std::fabs(extreme) ? f : extreme;
      const float d = extreme / -8, id = d != 0 ? 1 / d : 0;
      for (int j = 0; j < 32; ++j) {
        const int q = std::min(15, static_cast<int>(static_cast<int8_t>(v[j] * id + 8.5f)));
        x[b + j] = static_cast<double>(q - 8) * to_f16(d);
      }
    }
  }
}

// A key or value row of kv_dim values as `format` stores it.
inline void round_cache_row(KvFormat format, std::vector<double>& x) {
  switch (format) {
    case KvFormat::F32: for (double& v : x) v = static_cast<float>(v); return;
    case KvFormat::F16: for (double& v : x) v = to_f16(static_cast<float>(v)); return;
    case KvFormat::BF16: for (double& v : x) v = quant::bf16_to_fp32(quant::fp32_to_bf16(static_cast<float>(v))); return;
    case KvFormat::Q8_0:
    case KvFormat::Q4_0: round_blocks(format, x); return;
  }
}

// The query of one head as attention meets the keys: rounded to f16 for an f16 cache (ggml's f16 dot products),
// quantized to Q8_0 for a quantized one (as a block of 32 with zeros for the other heads where head_dim < 32).
inline std::vector<double> query_as_met(KvFormat format, const double* q, int hd) {
  std::vector<double> out(q, q + hd);
  if (format == KvFormat::F16) {
    for (double& v : out) v = to_f16(static_cast<float>(v));
  } else if (kv_format_is_quantized(format)) {
    out.resize(std::max(hd, 32), 0.0);
    round_blocks(KvFormat::Q8_0, out);
    out.resize(hd);
  }
  return out;
}

// The llama forward pass for one sequence, straight from its definition, in double precision.
inline std::vector<std::vector<double>> reference_logits(const Shape& s, const Weights& w, const std::vector<int32_t>& tokens,
                                                  const ReferenceOptions& options = {}) {
  const int hd = s.n_embd / s.n_head, group = s.n_head / s.n_head_kv;
  std::vector<std::vector<std::vector<double>>> keys(s.n_layer), values(s.n_layer);
  std::vector<std::vector<double>> result;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    std::vector<double> x(w.token_embd.begin() + tokens[pos] * s.n_embd,
                          w.token_embd.begin() + (tokens[pos] + 1) * s.n_embd);
    for (int l = 0; l < s.n_layer; ++l) {
      const Weights::Layer& L = w.layers[l];
      const std::vector<double> h = rms_norm(x, L.attn_norm);
      std::vector<double> q = matvec(L.wq, h, s.n_embd);
      std::vector<double> k = matvec(L.wk, h, s.n_head_kv * hd);
      const std::vector<double> v = matvec(L.wv, h, s.n_head_kv * hd);
      rope(q, s.n_head, hd, static_cast<int>(pos), s.rope_base);
      rope(k, s.n_head_kv, hd, static_cast<int>(pos), s.rope_base);
      std::vector<double> k_stored = k, v_stored = v;
      round_cache_row(options.cache, k_stored);
      round_cache_row(options.cache, v_stored);
      keys[l].push_back(k_stored);
      values[l].push_back(v_stored);
      std::vector<double> attn(s.n_embd, 0.0);
      const auto visible = [&](size_t j) {
        return options.window == 0 || j + options.window > pos || j < static_cast<size_t>(options.n_sink);
      };
      for (int head = 0; head < s.n_head; ++head) {
        const int kvh = head / group;
        const std::vector<double> query = query_as_met(options.cache, &q[head * hd], hd);
        std::vector<double> scores(pos + 1, 0.0);
        double max_score = -1e300, sum = 0;
        for (size_t j = 0; j <= pos; ++j) {
          if (!visible(j)) continue;
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += query[d] * keys[l][j][kvh * hd + d];
          scores[j] = dot / std::sqrt(static_cast<double>(hd));
          max_score = std::max(max_score, scores[j]);
        }
        for (size_t j = 0; j <= pos; ++j) sum += visible(j) ? (scores[j] = std::exp(scores[j] - max_score)) : 0.0;
        for (size_t j = 0; j <= pos; ++j) {
          if (!visible(j)) continue;
          double weight = scores[j] / sum;
          if (options.cache == KvFormat::F16) weight = to_f16(static_cast<float>(weight));
          for (int d = 0; d < hd; ++d) attn[head * hd + d] += weight * values[l][j][kvh * hd + d];
        }
      }
      const std::vector<double> o = matvec(L.wo, attn, s.n_embd);
      for (int i = 0; i < s.n_embd; ++i) x[i] += o[i];
      const std::vector<double> h2 = rms_norm(x, L.ffn_norm);
      const std::vector<double> g = matvec(L.gate, h2, s.n_ff);
      const std::vector<double> u = matvec(L.up, h2, s.n_ff);
      std::vector<double> act(s.n_ff);
      for (int i = 0; i < s.n_ff; ++i) act[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const std::vector<double> d = matvec(L.down, act, s.n_embd);
      for (int i = 0; i < s.n_embd; ++i) x[i] += d[i];
    }
    result.push_back(matvec(s.tied ? w.token_embd : w.output, rms_norm(x, w.output_norm), s.n_vocab));
  }
  return result;
}

// The shape and weights (dequantized by the reference dequantizer) of a loaded llama model, for
// reference_logits; its RMSNorm epsilon must be 1e-5 and its RoPE plain (every fixture's).
inline Shape shape_of(const model::LlamaModel& m) {
  Shape s;
  s.n_vocab = m.config.n_vocab;
  s.n_embd = m.config.n_embd;
  s.n_layer = m.config.n_layer;
  s.n_head = m.config.n_head;
  s.n_head_kv = m.config.n_head_kv;
  s.n_ff = m.config.n_ff;
  s.tied = m.tied_embeddings;
  s.rope_base = m.config.rope.freq_base;
  return s;
}

inline std::vector<float> dequantized(const model::MatrixView& m) {
  std::vector<float> out(static_cast<size_t>(m.n_rows * m.n_cols));
  for (int64_t r = 0; r < m.n_rows; ++r) quant::dequantize_row_ref(m.type, m.row(r), out.data() + r * m.n_cols, m.n_cols);
  return out;
}

inline Weights weights_of(const model::LlamaModel& m) {
  const int n = m.config.n_embd;
  Weights w;
  w.token_embd = dequantized(m.token_embd);
  if (!m.tied_embeddings) w.output = dequantized(m.output);
  w.output_norm.assign(m.output_norm, m.output_norm + n);
  for (const model::LlamaLayer& l : m.layers) {
    w.layers.push_back({std::vector<float>(l.attn_norm, l.attn_norm + n), dequantized(l.wq), dequantized(l.wk),
                        dequantized(l.wv), dequantized(l.wo), std::vector<float>(l.ffn_norm, l.ffn_norm + n),
                        dequantized(l.w_gate), dequantized(l.w_up), dequantized(l.w_down)});
  }
  return w;
}

inline std::vector<int32_t> pseudo_random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

// Largest |got - want| over rows [first_row, ...) of want, got holding rows of n_vocab.
inline double max_abs_diff(std::span<const float> got, const std::vector<std::vector<double>>& want, size_t first_row,
                    int n_vocab) {
  double worst = 0;
  for (size_t r = first_row; r < want.size(); ++r) {
    for (int v = 0; v < n_vocab; ++v) {
      worst = std::max(worst, std::abs(got[(r - first_row) * n_vocab + v] - want[r][v]));
    }
  }
  return worst;
}

}  // namespace tessera::test
