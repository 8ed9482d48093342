#include "cli/sampling_options.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <limits>

#include "cli/commands.h"

namespace tessera::cli {

void SamplingCliOptions::add_to(CLI::App* app) {
  engine::SamplerParams& p = params;
  app->add_option("--temp", p.temperature, "Temperature; 0 = greedy")->capture_default_str();
  app->add_option("--top-k", p.top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str();
  app->add_option("--top-p", p.top_p, "Keep the smallest set with this probability mass; 1 = off")
      ->capture_default_str();
  app->add_option("--min-p", p.min_p, "Drop tokens less likely than min-p x the best; 0 = off")->capture_default_str();
  app->add_option("--repeat-penalty", p.repeat_penalty, "Penalise repeating recent tokens; 1 = off")
      ->capture_default_str();
  app->add_option("--repeat-last-n", p.penalty_last_n, "Recent tokens the penalties look at")->capture_default_str();
  app->add_option("--frequency-penalty", p.frequency_penalty, "Subtract count x this from a logit")
      ->capture_default_str();
  app->add_option("--presence-penalty", p.presence_penalty, "Subtract this from seen tokens' logits")
      ->capture_default_str();
  app->add_option("-s,--seed", seed, "Random seed from 0 to 2^64-1; -1 or none: random. The same seed gives the same output");
}

engine::SamplerParams SamplingCliOptions::to_params() const {
  engine::SamplerParams p = params;
  p.seed = parse_seed(seed);
  try {
    p.validate();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  return p;
}

uint64_t parse_seed(const std::string& text) {
  if (text.empty() || text == "-1") {
    return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  uint64_t seed = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw UsageError(fmt::format("--seed must be an integer from 0 to {}, or -1 for a random seed (got '{}')",
                                 std::numeric_limits<uint64_t>::max(), text));
  }
  return seed;
}

}  // namespace tessera::cli
