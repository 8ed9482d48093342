#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace tessera::engine {

void SamplerParams::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (!(temperature >= 0) || !std::isfinite(temperature)) fail("--temp must be >= 0");
  if (top_k < 0) fail("--top-k must be >= 0");
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p must be in (0, 1]");
  if (!(min_p >= 0 && min_p <= 1)) fail("--min-p must be in [0, 1]");
  if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty)) fail("--repeat-penalty must be > 0");
  if (!std::isfinite(frequency_penalty)) fail("--frequency-penalty must be finite");
  if (!std::isfinite(presence_penalty)) fail("--presence-penalty must be finite");
  if (penalty_last_n < 0) fail("--repeat-last-n must be >= 0");
}

void require_finite_logits(std::span<const float> logits) {
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      throw std::runtime_error("the model computed a non-finite logit (" + std::to_string(logits[i]) + " for token " +
                               std::to_string(i) + "); its weights or hyper-parameters are broken");
    }
  }
}

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int top_n) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
  const double log_sum = max_logit + std::log(sum);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - log_sum);
  const size_t n = std::min(logits.size(), static_cast<size_t>(std::max(top_n, 0)));
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (size_t i = 0; i < n; ++i) out.top.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - log_sum));
  return out;
}

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  require_finite_logits(logits);
  candidates_.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) candidates_[i] = {logits[i], static_cast<int32_t>(i)};

  // Penalties over the last penalty_last_n tokens (repetition as in CTRL, frequency/presence as in OpenAI's API).
  const bool penalize = params_.repeat_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                        params_.presence_penalty != 0.0f;
  if (penalize && params_.penalty_last_n > 0) {
    std::unordered_map<int32_t, int> counts;
    const size_t n = std::min(history.size(), static_cast<size_t>(params_.penalty_last_n));
    for (size_t i = history.size() - n; i < history.size(); ++i) ++counts[history[i]];
    for (const auto& [tok, count] : counts) {
      if (tok < 0 || static_cast<size_t>(tok) >= candidates_.size()) continue;
      float& l = candidates_[tok].first;
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
      l -= static_cast<float>(count) * params_.frequency_penalty + params_.presence_penalty;
    }
  }

  if (params_.temperature == 0.0f) {
    auto best = std::max_element(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) {
      return a.first < b.first || (a.first == b.first && a.second > b.second);
    });
    return best->second;
  }

  // Highest first (lowest id among equals keeps the order deterministic).
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    n = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + n, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }

  // Softmax at the temperature over the survivors.
  const float max_logit = candidates_[0].first;
  std::vector<double> probs(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    probs[i] = std::exp((candidates_[i].first - max_logit) / params_.temperature);
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;

  // min-p: drop tokens less likely than min_p times the best; top-p: keep the smallest head of mass >= top_p.
  size_t keep = n;
  if (params_.min_p > 0) {
    const double floor = params_.min_p * probs[0];
    keep = 1;
    while (keep < n && probs[keep] >= floor) ++keep;
  }
  if (params_.top_p < 1) {
    double mass = 0;
    for (size_t i = 0; i < keep; ++i) {
      mass += probs[i];
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }

  double kept_mass = 0;
  for (size_t i = 0; i < keep; ++i) kept_mass += probs[i];
  std::uniform_real_distribution<double> uniform(0.0, kept_mass);
  const double r = uniform(rng_);
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (r < acc) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace tessera::engine
