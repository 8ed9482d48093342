#include "backend/cpu/ops.h"

#include <cmath>

#include "quant/quant.h"

namespace tessera::cpu {

void rms_norm(const float* x, const float* weight, float* y, int n, float eps) {
  // Eight running sums, which vectorize and do not wait on each other: it runs on one thread while the others wait
  // (docs/notes/2026-11-27-cpu-row-sharing.md).
  constexpr int kSums = 8;
  double sums[kSums] = {};
  int i = 0;
  for (; i + kSums <= n; i += kSums) {
    for (int k = 0; k < kSums; ++k) sums[k] += static_cast<double>(x[i + k]) * x[i + k];
  }
  double sum = 0;
  for (; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  for (int k = 0; k < kSums; ++k) sum += sums[k];
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / n) + eps);
  for (int i = 0; i < n; ++i) y[i] = (x[i] * scale) * weight[i];
}

RopeAngles rope_angles(const model::RopeConfig& rope, int32_t position) {
  const int n_pairs = rope.n_dims / 2;
  RopeAngles a;
  a.cos.resize(n_pairs);
  a.sin.resize(n_pairs);
  const float theta_scale = std::pow(rope.freq_base, -2.0f / static_cast<float>(rope.n_dims));
  float theta = static_cast<float>(position);
  for (int i = 0; i < n_pairs; ++i) {
    const float factor = rope.freq_factors.empty() ? 1.0f : rope.freq_factors[i];
    const float angle = rope.freq_scale * (theta / factor);
    a.cos[i] = std::cos(angle);
    a.sin[i] = std::sin(angle);
    theta *= theta_scale;
  }
  return a;
}

void apply_rope(float* x, int n_heads, int head_dim, const RopeAngles& angles) {
  const int n_pairs = static_cast<int>(angles.cos.size());
  for (int h = 0; h < n_heads; ++h) {
    float* head = x + static_cast<int64_t>(h) * head_dim;
    for (int i = 0; i < n_pairs; ++i) {
      const float x0 = head[2 * i], x1 = head[2 * i + 1];
      head[2 * i] = x0 * angles.cos[i] - x1 * angles.sin[i];
      head[2 * i + 1] = x0 * angles.sin[i] + x1 * angles.cos[i];
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float round_to_f16(float x) { return quant::fp16_to_fp32(quant::fp32_to_fp16(x)); }

void attend(const float* q, const float* keys, const float* values, int64_t stride, int n_keys, int head_dim,
            float scale, bool f16_rounding, float* scores, float* out) {
  float qr[512];
  const float* query = q;
  if (f16_rounding) {
    for (int d = 0; d < head_dim; ++d) qr[d] = round_to_f16(q[d]);
    query = qr;
  }
  for (int j = 0; j < n_keys; ++j) {
    const float* k = keys + j * stride;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < head_dim; ++d) dot += query[d] * k[d];
    scores[j] = dot;
  }
  attend_scored(scores, values, stride, n_keys, head_dim, scale, f16_rounding, out);
}

void attend_scored(float* scores, const float* values, int64_t stride, int n_keys, int head_dim, float scale,
                   bool f16_rounding, float* out) {
  float max_score = -INFINITY;
  for (int j = 0; j < n_keys; ++j) {
    scores[j] *= scale;
    max_score = std::max(max_score, scores[j]);
  }
  double sum = 0;
  for (int j = 0; j < n_keys; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int d = 0; d < head_dim; ++d) out[d] = 0;
  for (int j = 0; j < n_keys; ++j) {
    float w = scores[j] * inv_sum;
    if (f16_rounding) w = round_to_f16(w);
    const float* v = values + j * stride;
#pragma omp simd
    for (int d = 0; d < head_dim; ++d) out[d] += w * v[d];
  }
}

}  // namespace tessera::cpu
