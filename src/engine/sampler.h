// Turning logits into the next token: penalties, then temperature, top-k, top-p and min-p, then a draw.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace tessera::engine {

struct SamplerParams {
  float temperature = 0.8f;   // 0 = greedy (argmax, lowest id on ties)
  int top_k = 40;             // 0 = off
  float top_p = 0.95f;        // 1 = off
  float min_p = 0.05f;        // 0 = off
  float repeat_penalty = 1.0f;    // 1 = off; divides positive logits of recent tokens, multiplies negative ones
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int penalty_last_n = 64;    // how many recent tokens the penalties look at
  uint64_t seed = 0;

  // Throws std::invalid_argument naming the first value out of range.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  // Picks the next token from one logits row; `history` is every token so far (prompt and generated). Throws
  // std::runtime_error for a row with a NaN or infinity (require_finite_logits).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

int32_t argmax(std::span<const float> logits);  // lowest id on ties

// A token's log-probability under the model (log-softmax of the raw logits, before penalties and temperature),
// with the top_n most likely tokens' (best first, lowest id on ties).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};
TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int top_n);

// Throws std::runtime_error naming the first NaN or infinite logit: a model whose weights or hyper-parameters
// make them must stop with a reason instead of sampling garbage.
void require_finite_logits(std::span<const float> logits);

}  // namespace tessera::engine
