// The llama forward pass as a page you can read: one sequence, one token at a time, every number a double, every
// step one function written from the architecture's definition. It is the oracle the backends are tested against
// (tests/common/op_harness.h), not a fast path: weights are dequantized row by row as each matrix-vector product
// reads them, so it runs any file LlamaModel loads, in any block format, slowly.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/llama.h"

namespace tessera::model {

// How keys and values are kept between tokens.
enum class KvRounding {
  None,  // exact doubles
  // Rounded to f16 when stored, with the query and the softmax weights rounded to f16 before they meet them: what
  // ggml's f16 KV cache does, and so what llama.cpp's goldens contain (fixtures/README.md).
  F16,
};

struct ReferenceOptions {
  KvRounding kv_rounding = KvRounding::None;
  // Sliding-window attention, as StepPlan::Run: position p sees keys j <= p with j > p - window (0: all of them)
  // or j < n_sink.
  int32_t window = 0;
  int32_t n_sink = 0;
};

class LlamaReference {
 public:
  // The model (and the file it views) must outlive the reference.
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
