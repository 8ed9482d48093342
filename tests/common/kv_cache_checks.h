// The KV cache's features checked end to end through the engine against the f64 reference
// (model::reference_logits, which rounds keys, values and the query as each cache format does), for any backend:
// sliding windows (the model's own, and --kv-window with sinks), the cache formats against that simulation of
// their rounding, keys and values in different formats, and the context shift against a fresh evaluation.
// tests/model runs them on the CPU, tests/cuda on the GPU; `tolerance` is what the backend's own arithmetic adds
// (the CPU's float path, the GPU's f16 tensor-core products) on these models' logits.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "backend/kv_format.h"
#include "common/op_harness.h"
#include "common/random_model.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "model/llama.h"
#include "model/llama_reference.h"

namespace tessera::test {

// Logits of `tokens` from position 0, [n_tokens][n_vocab], by the reference with cache `formats`' rounding and a
// sliding window (StepPlan::Run's: 0 for none).
inline std::vector<double> reference(const model::LlamaModel& m, const std::vector<int32_t>& tokens, KvFormats formats,
                                     int32_t window = 0, int32_t n_sink = 0) {
  return model::reference_logits(m, tokens, {.kv_rounding = kv_roundings(formats), .window = window, .n_sink = n_sink});
}

// Rows [first, first + count) of logits [n][n_vocab].
inline std::span<const double> rows(const std::vector<double>& logits, size_t first, size_t count, int n_vocab) {
  return std::span(logits).subspan(first * n_vocab, count * n_vocab);
}

inline std::span<const double> row(const std::vector<double>& logits, size_t r, int n_vocab) {
  return rows(logits, r, 1, n_vocab);
}

// Largest |got - want| over values of the same rows (got: another reference's logits, or the engine's).
inline double max_abs_diff(std::span<const double> got, std::span<const double> want) {
  if (got.size() != want.size()) {
    ADD_FAILURE() << got.size() << " values against the reference's " << want.size();
    return INFINITY;
  }
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  return worst;
}

inline double max_abs_diff(std::span<const float> got, std::span<const double> want) {
  return max_abs_diff(std::vector<double>(got.begin(), got.end()), want);
}

inline engine::EngineOptions engine_options(const std::string& backend, KvFormats format) {
  engine::EngineOptions o;
  o.backend = backend;
  o.n_threads = 2;
  o.n_ctx = 64;
  o.kv_format = format;
  return o;
}

// A model whose metadata sets a sliding window of 16 (as Mistral's sets 4096): 100 positions, far past the window,
// in one step, token by token in a cache of 48 slots (so the blocks behind the window must be freed and reused), and
// two sequences in one step then decoded together, all against the reference with the window's mask (and the
// format's rounding).
inline void check_sliding_window_from_the_model(const std::string& backend, KvFormat format, double tolerance) {
  const std::string what = backend + ", " + std::string(kv_format_name(format));
  Shape shape;
  shape.n_embd = 64;
  shape.n_head_kv = 2;  // head dim 16: q8_0 blocks span two heads
  shape.weight_std = 0.1f;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 7);
  const std::vector<uint8_t> bytes =
      write_model(shape, w, [](gguf::Writer& out) { out.set("llama.attention.sliding_window", uint32_t{16}); });
  const gguf::File file = gguf::File::parse(bytes);
  const model::LlamaModel llama = model::LlamaModel::load(file);
  const std::vector<int32_t> tokens = pseudo_random_tokens(100, V, 1);
  const std::vector<double> want = reference(llama, tokens, format, 16);
  // The window matters here: without it the late positions' logits are far off.
  const std::vector<double> unwindowed = reference(llama, tokens, format);
  const double window_effect = max_abs_diff(row(want, 99, V), row(unwindowed, 99, V));
  ASSERT_GT(window_effect, 10 * tolerance) << what;

  engine::EngineOptions options = engine_options(backend, format);
  options.n_ctx = 128;
  {
    engine::Engine eng(file, options);
    EXPECT_EQ(eng.window(), 16);
    EXPECT_LE(max_abs_diff(eng.eval(eng.new_sequence(), tokens, true), want), tolerance) << what << ": one step";
  }
  {
    options.n_kv_tokens = 48;
    engine::Engine eng(file, options);
    const int32_t seq = eng.new_sequence();
    for (size_t p = 0; p < tokens.size(); ++p) {
      const std::span<const float> l = eng.eval(seq, std::span(&tokens[p], 1));
      ASSERT_LE(max_abs_diff(l, row(want, p, V)), tolerance) << what << ": token by token, position " << p;
      // The 16 visible positions span 2 blocks at most.
      ASSERT_LE(eng.kv().used_blocks(), 2) << what << ": position " << p;
    }
  }
  {
    // Sequences of 57 and 37 tokens, prompts in one step and then decode steps of both; the second's tokens are
    // the first's from position 40 on, so their windows hold different positions of the same tokens.
    options.n_kv_tokens = 0;
    engine::Engine eng(file, options);
    const std::vector<int32_t> a(tokens.begin(), tokens.begin() + 57), b(tokens.begin() + 40, tokens.begin() + 77);
    const std::vector<double> want_b = reference(llama, b, format, 16);
    const int32_t sa = eng.new_sequence(), sb = eng.new_sequence();
    const std::vector<engine::Engine::Chunk> prompts = {{sa, std::span(a).first(50), LogitsWanted::All},
                                                        {sb, std::span(b).first(30), LogitsWanted::All}};
    const std::span<const float> both = eng.step(prompts);
    EXPECT_LE(max_abs_diff(both.first(50 * V), rows(want, 0, 50, V)), tolerance) << what;
    EXPECT_LE(max_abs_diff(both.subspan(50 * V), rows(want_b, 0, 30, V)), tolerance) << what;
    for (int i = 0; i < 7; ++i) {
      const std::vector<engine::Engine::Chunk> step = {{sa, std::span(&a[50 + i], 1)}, {sb, std::span(&b[30 + i], 1)}};
      const std::span<const float> l = eng.step(step);
      EXPECT_LE(max_abs_diff(l.first(V), row(want, 50 + i, V)), tolerance) << what << ": decode step " << i;
      EXPECT_LE(max_abs_diff(l.subspan(V), row(want_b, 30 + i, V)), tolerance) << what << ": decode step " << i;
    }
  }
}

// --kv-window on a model without one: a window of 16 with the first 3 positions kept visible (sinks), the prompt in
// chunks of 7 tokens (window starts inside chunks) and then token by token, against the reference with that mask.
inline void check_kv_window_with_sinks(const std::string& backend, KvFormat format, double tolerance) {
  const std::string what = backend + ", " + std::string(kv_format_name(format));
  Shape shape;
  shape.n_embd = 64;
  shape.n_head_kv = 2;
  shape.tied = false;
  shape.weight_std = 0.1f;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 8);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const model::LlamaModel llama = model::LlamaModel::load(file);
  const std::vector<int32_t> tokens = pseudo_random_tokens(90, V, 2);
  engine::EngineOptions options = engine_options(backend, format);
  options.n_ctx = 128;
  options.n_batch = 7;
  options.kv_window = 16;
  options.n_sink = 3;
  engine::Engine eng(file, options);
  EXPECT_EQ(eng.kv().n_slots(), 16 + 16 + 16 + 16);  // sinks, window and one step in blocks, and one block more
  const std::vector<double> want = reference(llama, tokens, format, 16, 3);
  const int32_t seq = eng.new_sequence();
  EXPECT_LE(max_abs_diff(eng.eval(seq, std::span(tokens).first(80), true), rows(want, 0, 80, V)), tolerance) << what;
  for (size_t p = 80; p < tokens.size(); ++p) {
    EXPECT_LE(max_abs_diff(eng.eval(seq, std::span(&tokens[p], 1)), row(want, p, V)), tolerance)
        << what << ": position " << p;
  }
  const std::vector<double> without_sinks = reference(llama, tokens, format, 16);
  const double sink_effect = max_abs_diff(row(want, 89, V), row(without_sinks, 89, V));
  EXPECT_GT(sink_effect, 10 * tolerance) << what;
}

// Each cache format against the reference that rounds keys, values and the query the way that format's attention
// does, in one step and token by token: what is left is the backend's arithmetic and the odd value that rounds the
// other way at a block's rounding boundary, well under the format's own error (against exact keys and values).
inline void check_cache_formats_against_simulation(const std::string& backend, double tolerance) {
  for (const int n_embd : {32, 128}) {  // head dims 8 (blocks across 4 heads) and 32
    Shape shape;
    shape.n_embd = n_embd;
    shape.n_head_kv = 4;
    shape.weight_std = 0.1f;  // softmaxes neither flat nor one-hot, as in trained models
    const int V = shape.n_vocab;
    const Weights w = random_weights(shape, 9);
    const std::vector<uint8_t> bytes = write_model(shape, w);
    const gguf::File file = gguf::File::parse(bytes);
    const model::LlamaModel llama = model::LlamaModel::load(file);
    const std::vector<int32_t> tokens = pseudo_random_tokens(40, V, 3);
    const std::vector<double> exact = reference(llama, tokens, KvFormat::F32);
    for (const KvFormat format : {KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0, KvFormat::Q4_0}) {
      const std::vector<double> want = reference(llama, tokens, format);
      const std::string what =
          backend + ", " + std::string(kv_format_name(format)) + ", embd " + std::to_string(n_embd);
      engine::Engine eng(file, engine_options(backend, format));
      const std::span<const float> got = eng.eval(eng.new_sequence(), tokens, true);
      const double batched = max_abs_diff(got, want);
      const double own_error = max_abs_diff(got, exact);
      // f16's weights rounded after the softmax flip an f16 step where the two sums differ in the last bits.
      const double bound = (format == KvFormat::F16 ? own_error / 2 : own_error / 4) + tolerance;
      EXPECT_LE(batched, bound) << what;
      engine::Engine stepwise(file, engine_options(backend, format));
      const int32_t seq = stepwise.new_sequence();
      double token_by_token = 0;
      for (size_t p = 0; p < tokens.size(); ++p) {
        token_by_token =
            std::max(token_by_token, max_abs_diff(stepwise.eval(seq, std::span(&tokens[p], 1)), row(want, p, V)));
      }
      EXPECT_LE(token_by_token, bound) << what;
      std::printf("%s: max |engine - simulation| %.2e in one step, %.2e token by token; vs exact %.2e\n", what.c_str(),
                  batched, token_by_token, own_error);
    }
  }
}

// q8_0 keys with f16 values and f16 keys with q4_0 values (head dim 8: the q4_0 values' blocks span 4 heads, the
// f16 keys' rows do not), in one step and token by token: rounded at all, and by no more than the coarser format
// alone rounds.
inline void check_keys_and_values_in_different_formats(const std::string& backend, double tolerance) {
  Shape shape;
  shape.n_head_kv = 4;
  shape.weight_std = 0.1f;
  const int V = shape.n_vocab;
  const Weights w = random_weights(shape, 10);
  const std::vector<uint8_t> bytes = write_model(shape, w);
  const gguf::File file = gguf::File::parse(bytes);
  const model::LlamaModel llama = model::LlamaModel::load(file);
  const std::vector<int32_t> tokens = pseudo_random_tokens(30, V, 4);
  const std::vector<double> exact = reference(llama, tokens, KvFormat::F32);
  const double coarse_error = max_abs_diff(reference(llama, tokens, KvFormat::Q4_0), exact);
  for (const KvFormats formats : {KvFormats{KvFormat::Q8_0, KvFormat::F16}, KvFormats{KvFormat::F16, KvFormat::Q4_0}}) {
    const std::string what = backend + ", " + kv_formats_name(formats);
    engine::Engine eng(file, engine_options(backend, formats));
    const double error = max_abs_diff(eng.eval(eng.new_sequence(), tokens, true), exact);
    EXPECT_GT(error, 1e-6) << what;
    EXPECT_LE(error, 2 * coarse_error + tolerance) << what;
    engine::Engine stepwise(file, engine_options(backend, formats));
    const int32_t seq = stepwise.new_sequence();
    for (size_t p = 0; p < tokens.size(); ++p) {
      const double e = max_abs_diff(stepwise.eval(seq, std::span(&tokens[p], 1)), row(exact, p, V));
      EXPECT_LE(e, 2 * coarse_error + tolerance) << what << ": position " << p;
    }
  }
}

// After a context shift the next token's logits are those of a fresh evaluation of the kept tokens at their new
// positions: with one layer, a position's key and value depend only on its token and position, so re-rotating the
// moved keys is all a shift has to get right. `keep` 5 splits a block (slots are copied); for every cache format,
// within that format's rounding (the shifted keys are rounded twice). Both last tokens are decode steps.
inline void check_context_shift(const std::string& backend, double tolerance) {
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
    const std::string what = backend + ", " + std::string(kv_format_name(format));
    engine::Engine shifted(file, engine_options(backend, format));  // n_ctx 64
    const int32_t seq = shifted.new_sequence();
    shifted.eval(seq, std::span(tokens).first(64));
    const int32_t dropped = shifted.shift_context(seq, keep);
    ASSERT_EQ(dropped, 16);  // half of 59, in whole blocks
    EXPECT_EQ(shifted.sequence_length(seq), 48);
    const std::span<const float> got = shifted.eval(seq, std::span(&tokens[64], 1));

    std::vector<int32_t> kept(tokens.begin(), tokens.begin() + keep);
    kept.insert(kept.end(), tokens.begin() + keep + dropped, tokens.end());
    auto fresh_logits = [&](KvFormats fresh_format) {
      engine::Engine fresh(file, engine_options(backend, fresh_format));
      const int32_t s = fresh.new_sequence();
      fresh.eval(s, std::span(kept).first(kept.size() - 1));
      const std::span<const float> l = fresh.eval(s, std::span(&kept.back(), 1));
      return std::vector<float>(l.begin(), l.end());
    };
    const std::vector<float> want = fresh_logits(format), exact = fresh_logits(KvFormat::F32);
    double diff = 0, own_error = 0;
    for (int v = 0; v < V; ++v) {
      diff = std::max(diff, static_cast<double>(std::abs(got[v] - want[v])));
      own_error = std::max(own_error, static_cast<double>(std::abs(exact[v] - want[v])));
    }
    std::printf("%s: shifted vs fresh %.2e, fresh vs an f32 cache %.2e\n", what.c_str(), diff, own_error);
    // The shifted keys are rounded twice (stored, then re-rotated and stored again): up to about twice the
    // format's own error; with f32, the float rounding of the rotation.
    EXPECT_LE(diff, tolerance + 3 * own_error) << what;
    if (format == KvFormat::F32) {
      // The dropped tokens mattered: with them (no shift) the logits are far from these.
      engine::EngineOptions options = engine_options(backend, format);
      options.n_ctx = 128;
      engine::Engine unshifted(file, options);
      const std::span<const float> full = unshifted.eval(unshifted.new_sequence(), tokens);
      double shift_effect = 0;
      for (int v = 0; v < V; ++v)
        shift_effect = std::max(shift_effect, static_cast<double>(std::abs(full[v] - want[v])));
      EXPECT_GT(shift_effect, 100 * tolerance) << what;
    }
  }
}

}  // namespace tessera::test
