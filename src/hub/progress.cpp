#include "hub/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace tessera::hub {
namespace {

constexpr int kBarWidth = 20;
constexpr auto kTtyInterval = std::chrono::milliseconds(200);
constexpr auto kPlainInterval = std::chrono::seconds(5);

}  // namespace

std::string format_bytes(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (v >= 1024 && unit < 3) {
    v /= 1024;
    ++unit;
  }
  return v < 10 ? fmt::format("{:.2f} {}", v, kUnits[unit]) : fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string format_duration(double seconds) {
  const auto s = static_cast<uint64_t>(std::llround(std::max(0.0, seconds)));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
}

std::string progress_text(uint64_t done, uint64_t total, double bytes_per_second) {
  const double fraction = total ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 0.0;
  const int filled = static_cast<int>(fraction * kBarWidth);
  std::string text =
      fmt::format("[{}{}] {:3}%  {} / {}", std::string(filled, '#'), std::string(kBarWidth - filled, '-'),
                  static_cast<int>(fraction * 100), format_bytes(done), format_bytes(total));
  if (bytes_per_second > 0) {
    text += fmt::format("  {}/s", format_bytes(static_cast<uint64_t>(bytes_per_second)));
    if (done < total) text += "  ETA " + format_duration(static_cast<double>(total - done) / bytes_per_second);
  }
  return text;
}

Progress::Progress(std::string label, uint64_t total, uint64_t start, bool quiet)
    : label_(std::move(label)),
      total_(total),
      start_(start),
      quiet_(quiet),
      tty_(isatty(STDERR_FILENO) != 0),
      begun_(Clock::now()),
      last_shown_(begun_) {}

double Progress::rate(uint64_t done) const {
  const double seconds = std::chrono::duration<double>(Clock::now() - begun_).count();
  return seconds > 0.5 && done > start_ ? static_cast<double>(done - start_) / seconds : 0.0;
}

void Progress::update(uint64_t done) {
  if (quiet_) return;
  const Clock::time_point now = Clock::now();
  if (now - last_shown_ < (tty_ ? std::chrono::duration_cast<Clock::duration>(kTtyInterval)
                                : std::chrono::duration_cast<Clock::duration>(kPlainInterval)))
    return;
  last_shown_ = now;
  shown_ = true;
  if (tty_)
    std::fprintf(stderr, "\r%s \033[K", progress_text(done, total_, rate(done)).c_str());
  else
    std::fprintf(stderr, "%s: %s\n", label_.c_str(), progress_text(done, total_, rate(done)).c_str());
}

void Progress::finish(uint64_t done) {
  if (quiet_) return;
  if (tty_ && shown_) std::fprintf(stderr, "\r%s \033[K\n", progress_text(done, total_, rate(done)).c_str());
  const double seconds = std::chrono::duration<double>(Clock::now() - begun_).count();
  // A server that ignored the Range request sent the file from its start.
  const uint64_t fetched = done >= start_ ? done - start_ : done;
  std::fprintf(stderr, "%s: fetched %s in %s%s\n", label_.c_str(), format_bytes(fetched).c_str(),
               format_duration(seconds).c_str(),
               start_ ? fmt::format(" (resumed after {})", format_bytes(start_)).c_str() : "");
}

}  // namespace tessera::hub
