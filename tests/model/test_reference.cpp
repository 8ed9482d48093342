// Models written by our own GGUF writer, run by the engine and by a plain double-precision forward pass written
// here from the definition of the llama architecture: covers tied embeddings, MQA (one KV head), GQA,
// multi-sequence batches, sliding-window attention (with and without sinks), the quantized KV caches (against a
// simulation of their rounding) and the context shift.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace tessera {
namespace {

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

Weights random_weights(const Shape& s, uint32_t seed) {
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
std::vector<uint8_t> write_model(const Shape& s, const Weights& w,
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
std::vector<double> matvec(const std::vector<float>& w, const std::vector<double>& x, size_t n_rows) {
  const size_t n_cols = x.size();
  std::vector<double> y(n_rows, 0.0);
  for (size_t r = 0; r < n_rows; ++r) {
    for (size_t c = 0; c < n_cols; ++c) y[r] += static_cast<double>(w[r * n_cols + c]) * x[c];
  }
  return y;
}

std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<float>& weight) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / x.size() + 1e-5);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * weight[i];
  return y;
}

void rope(std::vector<double>& v, int n_heads, int hd, int pos, double base) {
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

float to_f16(float x) { return quant::fp16_to_fp32(quant::fp32_to_fp16(x)); }

// Rounds consecutive blocks of 32 values in place: Q8_0 as llama.cpp's CPU code writes a q8_0 cache (scale
// amax / 127 kept as f16, inverse 127 / amax, ties to even); Q4_0 as ggml's reference (the value of largest
// magnitude maps to -8, scale kept as f16, +8.5 truncated, at most 15).
void round_blocks(KvFormat format, std::vector<double>& x) {
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
void round_cache_row(KvFormat format, std::vector<double>& x) {
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
std::vector<double> query_as_met(KvFormat format, const double* q, int hd) {
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
std::vector<std::vector<double>> reference_logits(const Shape& s, const Weights& w, const std::vector<int32_t>& tokens,
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

engine::EngineOptions f32_cache_options() {
  engine::EngineOptions o;
  o.n_threads = 2;
  o.n_ctx = 64;
  o.kv_format = KvFormat::F32;
  return o;
}

void expect_matches_reference(const Shape& shape, uint32_t seed) {
  const Weights w = random_weights(shape, seed);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  engine::Engine eng(file, f32_cache_options());
  EXPECT_EQ(eng.model().tied_embeddings, shape.tied);
  const std::vector<int32_t> tokens = {1, 17, 60, 5, 33, 33, 2, 40, 59};
  const auto expected = reference_logits(shape, w, tokens);
  const std::span<const float> got = eng.eval(eng.new_sequence(), tokens, true);
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    for (int v = 0; v < shape.n_vocab; ++v) {
      ASSERT_NEAR(got[pos * shape.n_vocab + v], expected[pos][v], 2e-4) << "position " << pos << ", vocab " << v;
    }
  }
}

TEST(ReferenceForward, TiedEmbeddingsWithMqa) { expect_matches_reference(Shape{}, 1); }

TEST(ReferenceForward, SeparateOutputWithGqa) {
  Shape s;
  s.tied = false;
  s.n_head_kv = 2;
  s.rope_base = 500000;
  expect_matches_reference(s, 2);
}

TEST(ReferenceForward, PerLayerCountsThatAgree) {
  Shape s;
  s.per_layer_counts = true;
  s.n_head_kv = 2;
  expect_matches_reference(s, 4);
}

// Layers of different shapes are refused with the key named, not misread.
TEST(ReferenceForward, PerLayerCountsThatDifferAreAClearError) {
  const Shape shape;
  const Weights w = random_weights(shape, 5);
  auto load_with = [&](const std::string& key, const gguf::Value& value) {
    const std::vector<uint8_t> bytes = write_model(shape, w, [&](gguf::Writer& out) { out.set(key, value); });
    const gguf::File file = gguf::File::parse(bytes);
    try {
      engine::Engine eng(file, f32_cache_options());
    } catch (const gguf::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  const std::string differ = load_with("llama.attention.head_count_kv", std::vector<int32_t>{1, 2});
  EXPECT_NE(differ.find("'llama.attention.head_count_kv' differs between layers"), std::string::npos) << differ;
  const std::string length = load_with("llama.feed_forward_length", std::vector<int32_t>{40, 40, 40});
  EXPECT_NE(length.find("3 per-layer values for 2 layers"), std::string::npos) << length;
  const std::string zero = load_with("llama.attention.head_count", std::vector<uint32_t>{4, 0});
  EXPECT_NE(zero.find("invalid value 0 for layer 1"), std::string::npos) << zero;
}

// Two prompts in one step give each the logits it gets alone; so does a decode step that advances both
// sequences at once.
TEST(ReferenceForward, StepOfTwoSequencesEqualsEachAlone) {
  const Shape shape;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 3);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> a = {1, 4, 9, 16, 25, 36, 7}, b = {1, 50, 3, 7, 8};

  auto run_alone = [&](const std::vector<int32_t>& tokens) {
    engine::Engine eng(file, f32_cache_options());
    const std::span<const float> l = eng.eval(eng.new_sequence(), tokens, true);
    return std::vector<float>(l.begin(), l.end());
  };
  const std::vector<float> logits_a = run_alone(a), logits_b = run_alone(b);

  engine::Engine together(file, f32_cache_options());
  const int32_t sa = together.new_sequence(), sb = together.new_sequence();
  const std::span<const int32_t> prompt_a(a.data(), a.size() - 1), prompt_b(b.data(), b.size() - 1);
  const std::vector<engine::Engine::Chunk> prompts = {{sa, prompt_a, LogitsWanted::All},
                                                      {sb, prompt_b, LogitsWanted::All}};
  const std::span<const float> both = together.step(prompts);
  ASSERT_EQ(both.size(), (prompt_a.size() + prompt_b.size()) * V);
  for (size_t r = 0; r < prompt_a.size() + prompt_b.size(); ++r) {
    const float* expected = r < prompt_a.size() ? &logits_a[V * r] : &logits_b[V * (r - prompt_a.size())];
    for (int v = 0; v < V; ++v) ASSERT_NEAR(both[r * V + v], expected[v], 1e-5) << "row " << r << ", vocab " << v;
  }
  // The last token of each prompt as one decode step over both sequences.
  const std::vector<engine::Engine::Chunk> step = {{sa, std::span(&a.back(), 1)}, {sb, std::span(&b.back(), 1)}};
  const std::span<const float> last = together.step(step);
  for (int v = 0; v < V; ++v) {
    ASSERT_NEAR(last[v], logits_a[V * (a.size() - 1) + v], 1e-5) << "sequence a, vocab " << v;
    ASSERT_NEAR(last[V + v], logits_b[V * (b.size() - 1) + v], 1e-5) << "sequence b, vocab " << v;
  }
}

// Two sequences decoded a token at a time, in turn, take KV blocks in turn: each one's keys are runs of a block's
// slots with the other's blocks between them. Their logits equal those of each decoded alone (one run of slots),
// bit for bit, with either cache type.
TEST(ReferenceForward, SequencesWithInterleavedKvBlocksEqualEachAlone) {
  const Shape shape;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 5);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  std::vector<int32_t> a(40), b(40);
  for (int i = 0; i < 40; ++i) {
    a[i] = (7 * i + 1) % V;
    b[i] = (11 * i + 3) % V;
  }
  for (KvFormat kv_format : {KvFormat::F32, KvFormat::F16}) {
    engine::EngineOptions options = f32_cache_options();
    options.n_ctx = 128;
    options.kv_format = kv_format;
    auto decode_alone = [&](const std::vector<int32_t>& tokens) {
      engine::Engine eng(file, options);
      const int32_t seq = eng.new_sequence();
      std::vector<float> logits;
      for (int32_t t : tokens) {
        const std::span<const float> l = eng.eval(seq, std::span<const int32_t>(&t, 1));
        logits.assign(l.begin(), l.end());
      }
      return logits;
    };
    const std::vector<float> alone_a = decode_alone(a), alone_b = decode_alone(b);
    engine::Engine eng(file, options);
    const int32_t sa = eng.new_sequence(), sb = eng.new_sequence();
    std::vector<float> turn_a, turn_b;
    for (size_t i = 0; i < a.size(); ++i) {
      std::span<const float> l = eng.eval(sa, std::span<const int32_t>(&a[i], 1));
      turn_a.assign(l.begin(), l.end());
      l = eng.eval(sb, std::span<const int32_t>(&b[i], 1));
      turn_b.assign(l.begin(), l.end());
    }
    ASSERT_EQ(turn_a.size(), static_cast<size_t>(V));
    for (int v = 0; v < V; ++v) {
      ASSERT_EQ(turn_a[v], alone_a[v]) << "sequence a, vocab " << v << ", f16 cache " << (kv_format == KvFormat::F16);
      ASSERT_EQ(turn_b[v], alone_b[v]) << "sequence b, vocab " << v << ", f16 cache " << (kv_format == KvFormat::F16);
    }
  }
}

std::vector<int32_t> pseudo_random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

// Largest |got - want| over rows [first_row, ...) of want, got holding rows of n_vocab.
double max_abs_diff(std::span<const float> got, const std::vector<std::vector<double>>& want, size_t first_row,
                    int n_vocab) {
  double worst = 0;
  for (size_t r = first_row; r < want.size(); ++r) {
    for (int v = 0; v < n_vocab; ++v) {
      worst = std::max(worst, std::abs(got[(r - first_row) * n_vocab + v] - want[r][v]));
    }
  }
  return worst;
}

// A model whose metadata sets a sliding window of 16 (as Mistral's sets 4096): 100 positions, far past the window,
// in one step, token by token in a cache of 48 slots (so the blocks behind the window must be freed and reused), and
// two sequences in one step, all against the reference with the window's mask.
TEST(ReferenceForward, SlidingWindowFromTheModelMatchesReference) {
  Shape shape;
  shape.n_head_kv = 2;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 7);
  const std::vector<uint8_t> bytes =
      write_model(shape, w, [](gguf::Writer& out) { out.set("llama.attention.sliding_window", uint32_t{16}); });
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> tokens = pseudo_random_tokens(100, V, 1);
  const auto want = reference_logits(shape, w, tokens, {.window = 16});
  // The window matters here: without it the late positions' logits are far off.
  const auto unwindowed = reference_logits(shape, w, tokens);
  double window_effect = 0;
  for (int v = 0; v < V; ++v) window_effect = std::max(window_effect, std::abs(want[99][v] - unwindowed[99][v]));
  ASSERT_GT(window_effect, 0.05);

  engine::EngineOptions options = f32_cache_options();
  options.n_ctx = 128;
  {
    engine::Engine eng(file, options);
    EXPECT_EQ(eng.window(), 16);
    EXPECT_LE(max_abs_diff(eng.eval(eng.new_sequence(), tokens, true), want, 0, V), 2e-4) << "one step";
  }
  {
    options.n_kv_tokens = 48;
    engine::Engine eng(file, options);
    const int32_t seq = eng.new_sequence();
    for (size_t p = 0; p < tokens.size(); ++p) {
      const std::span<const float> l = eng.eval(seq, std::span(&tokens[p], 1));
      ASSERT_LE(max_abs_diff(l, {want[p]}, 0, V), 2e-4) << "token by token, position " << p;
      ASSERT_LE(eng.kv().used_blocks(), 2) << "position " << p;  // the 16 visible positions span 2 blocks at most
    }
  }
  {
    // Sequences of 60 and 37 tokens, prompts in one step and then decode steps of both; the second's tokens are
    // the first's from position 40 on, so their windows hold different positions of the same tokens.
    options.n_kv_tokens = 0;
    options.n_batch = 512;
    engine::Engine eng(file, options);
    const std::vector<int32_t> a(tokens.begin(), tokens.begin() + 60), b(tokens.begin() + 40, tokens.begin() + 77);
    const auto want_b = reference_logits(shape, w, b, {.window = 16});
    const int32_t sa = eng.new_sequence(), sb = eng.new_sequence();
    const std::vector<engine::Engine::Chunk> prompts = {{sa, std::span(a).first(50), LogitsWanted::All},
                                                        {sb, std::span(b).first(30), LogitsWanted::All}};
    const std::span<const float> both = eng.step(prompts);
    EXPECT_LE(max_abs_diff(both.first(50 * V), {want.begin(), want.begin() + 50}, 0, V), 2e-4);
    EXPECT_LE(max_abs_diff(both.subspan(50 * V), {want_b.begin(), want_b.begin() + 30}, 0, V), 2e-4);
    for (int i = 0; i < 7; ++i) {
      const std::vector<engine::Engine::Chunk> step = {{sa, std::span(&a[50 + i], 1)}, {sb, std::span(&b[30 + i], 1)}};
      const std::span<const float> l = eng.step(step);
      EXPECT_LE(max_abs_diff(l.first(V), {want[50 + i]}, 0, V), 2e-4) << "decode step " << i;
      EXPECT_LE(max_abs_diff(l.subspan(V), {want_b[30 + i]}, 0, V), 2e-4) << "decode step " << i;
    }
  }
}

// --kv-window on a model without one: a window of 16 with the first 3 positions kept visible (sinks), the prompt in
// chunks of 7 tokens (window starts inside chunks), against the reference with the same mask.
TEST(ReferenceForward, KvWindowWithSinksMatchesReference) {
  Shape shape;
  shape.tied = false;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 8);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> tokens = pseudo_random_tokens(90, V, 2);
  engine::EngineOptions options = f32_cache_options();
  options.n_ctx = 128;
  options.n_batch = 7;
  options.kv_window = 16;
  options.n_sink = 3;
  engine::Engine eng(file, options);
  EXPECT_EQ(eng.kv().n_slots(), 16 + 16 + 16 + 16);  // sinks, window and one step in blocks, and one block more
  const auto want = reference_logits(shape, w, tokens, {.window = 16, .n_sink = 3});
  EXPECT_LE(max_abs_diff(eng.eval(eng.new_sequence(), tokens, true), want, 0, V), 2e-4);
  const auto without_sinks = reference_logits(shape, w, tokens, {.window = 16});
  double sink_effect = 0;
  for (int v = 0; v < V; ++v) sink_effect = std::max(sink_effect, std::abs(want[89][v] - without_sinks[89][v]));
  EXPECT_GT(sink_effect, 0.01);
}

// Each cache format against the reference that rounds keys, values and the query the way that format's attention
// does, in one step and token by token: what is left is float arithmetic and the odd value that rounds the other
// way at a block's rounding boundary. bf16 and the f32 reference show the quantized formats' own error for scale.
TEST(ReferenceForward, CacheFormatsMatchASimulationOfTheirRounding) {
  for (const int n_embd : {32, 128}) {  // head dims 8 (blocks across 4 heads) and 32
    Shape shape;
    shape.n_embd = n_embd;
    shape.n_head_kv = 4;
    shape.weight_std = 0.1f;  // softmaxes neither flat nor one-hot, as in trained models
    const int V = shape.n_vocab;
    const Weights w = random_weights(shape, 9);
    const std::vector<uint8_t> bytes = write_model(shape, w);
    const gguf::File file = gguf::File::parse(bytes);
    const std::vector<int32_t> tokens = pseudo_random_tokens(40, V, 3);
    const auto exact = reference_logits(shape, w, tokens);
    for (const KvFormat format : {KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0, KvFormat::Q4_0}) {
      const auto want = reference_logits(shape, w, tokens, {.cache = format});
      engine::EngineOptions options = f32_cache_options();
      options.kv_format = format;
      const std::string what = std::string(kv_format_name(format)) + " embd " + std::to_string(n_embd);
      engine::Engine eng(file, options);
      const std::span<const float> got = eng.eval(eng.new_sequence(), tokens, true);
      const double batched = max_abs_diff(got, want, 0, V);
      const double own_error = max_abs_diff(got, exact, 0, V);
      // f16's weights rounded after the softmax flip an f16 step where the two sums differ in the last bits.
      const double tolerance = (format == KvFormat::F16 ? own_error / 2 : own_error / 4) + 2e-4;
      EXPECT_LE(batched, tolerance) << what;
      engine::Engine stepwise(file, options);
      const int32_t seq = stepwise.new_sequence();
      double token_by_token = 0;
      for (size_t p = 0; p < tokens.size(); ++p) {
        token_by_token =
            std::max(token_by_token, max_abs_diff(stepwise.eval(seq, std::span(&tokens[p], 1)), {want[p]}, 0, V));
      }
      EXPECT_LE(token_by_token, tolerance) << what;
      std::printf("%s: max |engine - simulation| %.2e in one step, %.2e token by token; vs exact %.2e\n",
                  what.c_str(), batched, token_by_token, own_error);
    }
  }
}

// Mixed formats: q8_0 keys with f16 values and f16 keys with q4_0 values, head dims under 32 included, agree with
// a reference that rounds keys and values each their own way.
TEST(ReferenceForward, KeysAndValuesInDifferentFormats) {
  Shape shape;
  shape.n_head_kv = 4;  // head_dim 8: the q4_0 values' blocks span 4 heads, the f16 keys' rows do not
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 10);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> tokens = pseudo_random_tokens(30, V, 4);
  const auto exact = reference_logits(shape, w, tokens);
  for (const KvFormats formats : {KvFormats{KvFormat::Q8_0, KvFormat::F16}, KvFormats{KvFormat::F16, KvFormat::Q4_0}}) {
    engine::EngineOptions options = f32_cache_options();
    options.kv_format = formats;
    engine::Engine eng(file, options);
    const std::span<const float> got = eng.eval(eng.new_sequence(), tokens, true);
    // Bounded by the error of the coarser format alone (the simulation of both at once is the same code).
    const auto coarser = reference_logits(shape, w, tokens, {.cache = KvFormat::Q4_0});
    double coarse_error = 0;
    for (size_t p = 0; p < tokens.size(); ++p) {
      for (int v = 0; v < V; ++v) coarse_error = std::max(coarse_error, std::abs(coarser[p][v] - exact[p][v]));
    }
    const double error = max_abs_diff(got, exact, 0, V);
    EXPECT_GT(error, 1e-6) << kv_formats_name(formats);  // rounded at all
    EXPECT_LE(error, 2 * coarse_error) << kv_formats_name(formats);
  }
}

// After a context shift the next token's logits are those of a fresh evaluation of the kept tokens at their new
// positions: with one layer, a position's key and value depend only on its token and position, so re-rotating the
// moved keys is all a shift has to get right. `keep` 5 splits a block (slots are copied); for every cache format,
// within that format's rounding (the shifted keys are rounded twice).
TEST(ReferenceForward, ContextShiftEqualsAFreshEvaluation) {
  Shape shape;
  shape.n_layer = 1;
  shape.n_embd = 128;
  shape.n_head_kv = 2;
  shape.weight_std = 0.1f;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 11);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const std::vector<int32_t> tokens = pseudo_random_tokens(65, V, 5);
  const int keep = 5;
  for (const KvFormat format : {KvFormat::F32, KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0, KvFormat::Q4_0}) {
    engine::EngineOptions options = f32_cache_options();
    options.kv_format = format;
    engine::Engine shifted(file, options);  // n_ctx 64
    const int32_t seq = shifted.new_sequence();
    shifted.eval(seq, std::span(tokens).first(64));
    const int32_t dropped = shifted.shift_context(seq, keep);
    ASSERT_EQ(dropped, 16);  // half of 59, in whole blocks
    EXPECT_EQ(shifted.sequence_length(seq), 48);
    const std::span<const float> got = shifted.eval(seq, std::span(&tokens[64], 1));

    std::vector<int32_t> kept(tokens.begin(), tokens.begin() + keep);
    kept.insert(kept.end(), tokens.begin() + keep + dropped, tokens.end());
    engine::Engine fresh(file, options);
    const std::span<const float> want = fresh.eval(fresh.new_sequence(), kept);
    engine::EngineOptions exact_options = f32_cache_options();
    engine::Engine exact(file, exact_options);
    const std::span<const float> exact_logits = exact.eval(exact.new_sequence(), kept);
    double diff = 0, own_error = 0;
    for (int v = 0; v < V; ++v) {
      diff = std::max(diff, static_cast<double>(std::abs(got[v] - want[v])));
      own_error = std::max(own_error, static_cast<double>(std::abs(exact_logits[v] - want[v])));
    }
    std::printf("%s: shifted vs fresh %.2e, fresh vs an f32 cache %.2e\n", std::string(kv_format_name(format)).c_str(),
                diff, own_error);
    // The shifted keys are rounded twice (stored, then re-rotated and stored again): up to about twice the
    // format's own error; with f32, the float rounding of the rotation.
    const double tolerance = 1e-5 + 3 * own_error;
    EXPECT_LE(diff, tolerance) << kv_format_name(format);
    if (format == KvFormat::F32) {
      // The dropped tokens mattered: with them (no shift) the logits are far from these.
      options.n_ctx = 128;
      engine::Engine unshifted(file, options);
      const std::span<const float> full = unshifted.eval(unshifted.new_sequence(), tokens);
      double shift_effect = 0;
      for (int v = 0; v < V; ++v) shift_effect = std::max(shift_effect, static_cast<double>(std::abs(full[v] - want[v])));
      EXPECT_GT(shift_effect, 1e3 * tolerance);
    }
  }
}

}  // namespace
}  // namespace tessera
