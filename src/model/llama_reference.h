// The llama forward pass as a page you can read: one sequence, one token at a time, every number a double, every
// step one function written from the architecture's definition. It is the oracle the backends are tested against
// (tests/common/op_harness.h, tests/common/kv_cache_checks.h), not a fast path: weights are dequantized row by row
// by the formats' scalar definitions (quant::dequantize_row_ref) as each matrix-vector product reads them, so it
// runs any file LlamaModel loads, in any block format, slowly. It can keep keys and values as each KV cache format
// stores them (KvRounding), and apply a sliding window's mask.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/llama.h"

namespace tessera::model {

// How keys (or values) are kept between tokens: exactly, or rounded as a KV cache format stores them, so that the
// reference predicts a backend's cache to the last bit of its rounding. These are backend/kv_format.h's formats,
// which this room cannot name (data flows model -> backend); the tests map one to the other
// (tests/common/op_harness.h, kv_rounding).
enum class KvRounding {
  None,  // exact doubles
  F32,   // rounded to float
  // Rounded to f16. With f16 keys and values the query and the softmax weights are rounded to f16 too before they
  // meet them: what ggml's f16 KV cache does, and so what llama.cpp's goldens contain (fixtures/README.md).
  F16,
  BF16,  // rounded to bf16
  // Blocks of 32 consecutive values of a token's row (its KV heads in order) with one f16 scale, as ggml's q8_0
  // and q4_0; such keys meet a query quantized to q8_0, head by head.
  Q8_0,
  Q4_0,
};

// Keys and values each have their own rounding, as a KV cache has a format for each.
struct KvRoundings {
  KvRounding k = KvRounding::None;
  KvRounding v = KvRounding::None;

  KvRoundings() = default;
  // One rounding for both, the common case: `{.kv_rounding = KvRounding::F16}`.
  KvRoundings(KvRounding both) : k(both), v(both) {}  // NOLINT(google-explicit-constructor)
  KvRoundings(KvRounding keys, KvRounding values) : k(keys), v(values) {}
};

struct ReferenceOptions {
  KvRoundings kv_rounding;
  // Sliding-window attention, as StepPlan::Run: position p sees keys j <= p with j > p - window (0: all of them)
  // or j < n_sink.
  int32_t window = 0;
  int32_t n_sink = 0;
};

class LlamaReference {
 public:
  // The model (and the file it views) must outlive the reference. Throws std::invalid_argument where a quantized
  // rounding's blocks of 32 do not fit the model's KV heads (as the backends refuse that cache format).
  explicit LlamaReference(const LlamaModel& model, const ReferenceOptions& options = {});

  // Runs `token` at the next position (0 for the first call) and returns its logits, [n_vocab].
  const std::vector<double>& forward(int32_t token);
  int32_t n_past() const { return n_past_; }

 private:
  void attention_block(int layer);
  void feed_forward_block(int layer);

  const LlamaModel& model_;
  ReferenceOptions options_;
  int32_t n_past_ = 0;  // tokens in the cache; the next token's position

  // Run state, allocated at construction (scores_ grows with the sequence).
  std::vector<double> x_;       // (n_embd) the residual stream of the current token
  std::vector<double> xb_;      // (n_embd) x_ after an RMSNorm
  std::vector<double> q_;       // (q_dim) the query, n_head heads of head_dim
  std::vector<double> k_;       // (kv_dim) the key, n_head_kv heads of head_dim
  std::vector<double> v_;       // (kv_dim) the value
  std::vector<double> scores_;  // (n_past) one query head's attention weights over the cache
  std::vector<double> attn_;    // (q_dim) the attention output of every query head
  std::vector<double> proj_;    // (n_embd) an output projection, added to x_
  std::vector<double> gate_;    // (n_ff) the feed-forward gate projection, then silu(gate) * up
  std::vector<double> up_;      // (n_ff) the feed-forward up projection
  std::vector<double> logits_;  // (n_vocab)

  // The KV cache, one row of kv_dim per token: (n_layer, n_past * kv_dim). Keys are stored after RoPE.
  std::vector<std::vector<double>> key_cache_;
  std::vector<std::vector<double>> value_cache_;
};

// Logits of every token of one sequence run from position 0, row-major [n_tokens][n_vocab].
std::vector<double> reference_logits(const LlamaModel& model, std::span<const int32_t> tokens,
                                     const ReferenceOptions& options = {});

}  // namespace tessera::model
