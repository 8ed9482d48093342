#include "server/metrics.h"

#include <fmt/format.h>

namespace tessera::server {

void Metrics::count_request(std::string_view status) {
  const std::lock_guard lock(mutex_);
  auto it = requests_.find(status);
  if (it == requests_.end()) it = requests_.emplace(std::string(status), 0).first;
  ++it->second;
}

void Metrics::add_tokens(int64_t prompt, int64_t cached_prompt, int64_t generated) {
  const std::lock_guard lock(mutex_);
  prompt_tokens_ += prompt;
  cached_prompt_tokens_ += cached_prompt;
  generated_tokens_ += generated;
}

template <size_t N>
void Metrics::Histogram<N>::observe(double value) {
  size_t b = 0;
  while (b < N && value > bounds[b]) ++b;
  ++counts[b];
  sum += value;
}

template <size_t N>
void Metrics::Histogram<N>::render(std::string& out, std::string_view name) const {
  int64_t cumulative = 0;
  for (size_t b = 0; b < N; ++b) {
    cumulative += counts[b];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[b], cumulative);
  }
  cumulative += counts.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, cumulative);
  out += fmt::format("{}_sum {}\n", name, sum);
  out += fmt::format("{}_count {}\n", name, cumulative);
}

void Metrics::observe_first_token(double seconds) {
  const std::lock_guard lock(mutex_);
  first_token_.observe(seconds);
}

void Metrics::observe_step(size_t sequences) {
  const std::lock_guard lock(mutex_);
  step_sequences_.observe(static_cast<double>(sequences));
}

std::string Metrics::render(const Gauges& g) const {
  const std::lock_guard lock(mutex_);
  std::string out;
  auto metric = [&](std::string_view name, std::string_view type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  metric("tessera_requests_total", "counter", "Requests by how they ended.");
  for (const char* status : {"ok", "stopped", "invalid", "rejected", "error"}) {
    const auto it = requests_.find(status);
    out += fmt::format("tessera_requests_total{{status=\"{}\"}} {}\n", status, it == requests_.end() ? 0 : it->second);
  }
  metric("tessera_requests_running", "gauge", "Requests with a sequence in the engine.");
  out += fmt::format("tessera_requests_running {}\n", g.running);
  metric("tessera_requests_waiting", "gauge", "Requests queued for a sequence.");
  out += fmt::format("tessera_requests_waiting {}\n", g.waiting);
  metric("tessera_prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
  out += fmt::format("tessera_prompt_tokens_total {}\n", prompt_tokens_);
  metric("tessera_prefix_cache_hit_tokens_total", "counter", "Prompt tokens taken from the prefix cache.");
  out += fmt::format("tessera_prefix_cache_hit_tokens_total {}\n", cached_prompt_tokens_);
  metric("tessera_generated_tokens_total", "counter", "Tokens generated for finished requests.");
  out += fmt::format("tessera_generated_tokens_total {}\n", generated_tokens_);
  metric("tessera_kv_blocks_used", "gauge", "KV cache blocks held by sequences.");
  out += fmt::format("tessera_kv_blocks_used {}\n", g.kv_blocks_used);
  metric("tessera_kv_blocks_cached", "gauge", "KV cache blocks kept only for the prefix cache.");
  out += fmt::format("tessera_kv_blocks_cached {}\n", g.kv_blocks_cached);
  metric("tessera_kv_blocks_total", "gauge", "KV cache blocks in all.");
  out += fmt::format("tessera_kv_blocks_total {}\n", g.kv_blocks_total);
  metric("tessera_time_to_first_token_seconds", "histogram", "From a request's arrival to its first token.");
  first_token_.render(out, "tessera_time_to_first_token_seconds");
  metric("tessera_step_sequences", "histogram", "Sequences in each engine step's forward call.");
  step_sequences_.render(out, "tessera_step_sequences");
  return out;
}

}  // namespace tessera::server
