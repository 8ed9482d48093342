// The server's counters, gauges and time-to-first-token histogram, rendered in Prometheus' text format for
// GET /metrics. Safe to update from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace tessera::server {

class Metrics {
 public:
  // How a request ended, one label value each: ok, stopped (cancelled or disconnected), invalid (a 4xx),
  // rejected (queue full or shutting down), error (the engine failed).
  void count_request(std::string_view status);
  void add_tokens(int64_t prompt, int64_t cached_prompt, int64_t generated);
  void observe_first_token(double seconds);

  // What the engine thread publishes after each step.
  struct Gauges {
    int64_t running = 0;
    int64_t waiting = 0;
    int64_t kv_blocks_used = 0;
    int64_t kv_blocks_cached = 0;
    int64_t kv_blocks_total = 0;
  };
  std::string render(const Gauges& gauges) const;

  // Upper bounds of the time-to-first-token buckets, in seconds (then +Inf).
  static constexpr std::array<double, 12> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

 private:
  mutable std::mutex mutex_;
  std::map<std::string, int64_t, std::less<>> requests_;
  int64_t prompt_tokens_ = 0;
  int64_t cached_prompt_tokens_ = 0;
  int64_t generated_tokens_ = 0;
  std::array<int64_t, kBuckets.size() + 1> first_token_counts_{};
  double first_token_sum_ = 0;
};

}  // namespace tessera::server
