// Download progress on stderr: a bar redrawn in place on a terminal (bytes, rate, ETA), otherwise a plain line
// every few seconds, so logs of scripted pulls stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace tessera::hub {

std::string format_bytes(uint64_t bytes);     // "512 B", "1.5 KiB", "4.07 GiB"
std::string format_duration(double seconds);  // "45s", "3m12s", "2h05m"
// "[##########----------]  45.2 MiB / 1.07 GiB  12.3 MiB/s  ETA 1m30s"; the rate and ETA are left out while
// the rate is unknown (0).
std::string progress_text(uint64_t done, uint64_t total, double bytes_per_second);

class Progress {
 public:
  // `start` bytes were already there (a resumed download); the rate counts only what this run fetches.
  Progress(std::string label, uint64_t total, uint64_t start, bool quiet);
  void update(uint64_t done);
  void finish(uint64_t done);  // ends the bar's line; says how much this run fetched and how fast

 private:
  using Clock = std::chrono::steady_clock;
  double rate(uint64_t done) const;
  std::string label_;
  uint64_t total_, start_;
  bool quiet_, tty_;
  Clock::time_point begun_, last_shown_;
  bool shown_ = false;
};

}  // namespace tessera::hub
