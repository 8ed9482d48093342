// Llama models of random f32 weights, written with our GGUF writer: what the tests that run a whole forward pass
// (the engine's, against model::reference_logits) build their models from. Shape says what differs from the
// defaults; write_model's `edit` adds or changes metadata.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace tessera::test {

// A model's hyper-parameters; head_dim is n_embd / n_head.
struct Shape {
  int n_vocab = 61, n_embd = 32, n_layer = 2, n_head = 4, n_head_kv = 1, n_ff = 40;
  bool tied = true;
  float rope_base = 10000;
  bool per_layer_counts = false;  // head counts and FFN width as one value per layer, as newer GGUF files may
  float weight_std = 0.2f;        // of every weight; the norms' weights are 1 + that noise
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

// n tokens drawn uniformly from [0, n_vocab).
inline std::vector<int32_t> pseudo_random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

}  // namespace tessera::test
