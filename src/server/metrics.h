// The server's counters, gauges and histograms (time to first token, sequences per engine step), rendered in
// Prometheus' text format for GET /metrics. Safe to update from any thread.
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
  // The sequences one engine step ran together: how much batching the load allowed.
  void observe_step(size_t sequences);

  // What the engine thread publishes after each step.
  struct Gauges {
    int64_t running = 0;
    int64_t waiting = 0;
    int64_t kv_blocks_used = 0;
    int64_t kv_blocks_cached = 0;
    int64_t kv_blocks_total = 0;
  };
  std::string render(const Gauges& gauges) const;

  // Upper bounds of the histograms' buckets (then +Inf): time to first token in seconds, sequences per step.
  static constexpr std::array<double, 12> kFirstTokenBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                               0.5,   1,    2.5,   5,    10,  30};
  static constexpr std::array<double, 9> kStepSequenceBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};

 private:
  template <size_t N>
  struct Histogram {
    const std::array<double, N>& bounds;
    std::array<int64_t, N + 1> counts{};
    double sum = 0;
    void observe(double value);
    void render(std::string& out, std::string_view name) const;
  };

  mutable std::mutex mutex_;
  std::map<std::string, int64_t, std::less<>> requests_;
  int64_t prompt_tokens_ = 0;
  int64_t cached_prompt_tokens_ = 0;
  int64_t generated_tokens_ = 0;
  Histogram<kFirstTokenBuckets.size()> first_token_{kFirstTokenBuckets};
  Histogram<kStepSequenceBuckets.size()> step_sequences_{kStepSequenceBuckets};
};

}  // namespace tessera::server
