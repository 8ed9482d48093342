// The CPU backend's elementwise and attention ops, written plainly: they are both the CPU fast path and the
// reference that the CUDA kernels are tested against. Numerics follow llama.cpp where it matters for matching
// its logits: RMSNorm sums squares in double, RoPE advances the angle by repeated multiplication in float, and
// with an f16 KV cache the query and the softmax weights are rounded to f16 as ggml does before its f16 dots.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/llama.h"

namespace tessera::cpu {

// y = x / sqrt(mean(x^2) + eps) * weight, one row of n.
void rms_norm(const float* x, const float* weight, float* y, int n, float eps);

// cos/sin of every rotated pair of one position.
struct RopeAngles {
  std::vector<float> cos;  // [n_dims / 2]
  std::vector<float> sin;  // [n_dims / 2]
};
RopeAngles rope_angles(const model::RopeConfig& rope, int32_t position);

// Rotates adjacent pairs (2i, 2i+1), i < n_dims/2, of each of n_heads heads of head_dim values (llama.cpp's
// "normal" RoPE mode, which GGUF llama weights are permuted for).
void apply_rope(float* x, int n_heads, int head_dim, const RopeAngles& angles);

// out = silu(gate) * up
void swiglu(const float* gate, const float* up, float* out, int n);

// Rounds to the nearest f16 and back (what storing in an f16 cache does).
float round_to_f16(float x);

// One query head's attention over n_keys keys and values (rows of head_dim floats, row stride `stride`):
// out = softmax(q.k * scale) V. With f16_rounding, q and the softmax weights are rounded to f16 first, as ggml
// does when K and V are f16. `scores` is scratch of n_keys floats. The forward pass runs attend_block
// (attention.h), which computes this for many query rows at once; this is its reference.
void attend(const float* q, const float* keys, const float* values, int64_t stride, int n_keys, int head_dim,
            float scale, bool f16_rounding, float* scores, float* out);

// attend() after its scores: out = softmax(scores * scale) V for scores already made (q.k of each key), which it
// overwrites. With f16_rounding the softmax weights are rounded to f16. The reference of attend_block_scored.
void attend_scored(float* scores, const float* values, int64_t stride, int n_keys, int head_dim, float scale,
                   bool f16_rounding, float* out);

}  // namespace tessera::cpu
