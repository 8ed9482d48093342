// A memory read-bandwidth probe for `tessera bench --membw`: token generation streams every weight once per
// token, so its speed is judged against what this machine's memory delivers to the same number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace tessera::cli {

struct MemoryBandwidth {
  double best_gb_s = 0;    // fastest repetition, GB/s (1e9 bytes)
  double median_gb_s = 0;  // median repetition
  size_t buffer_bytes = 0;
  int threads = 0;
  int repetitions = 0;
  std::string method;      // "avx512", "avx2" or "scalar" loads
};

// Reads a buffer of `buffer_bytes` (far larger than the last-level cache) `repetitions` times, each thread
// streaming its own contiguous share, and reports the read rate.
MemoryBandwidth measure_read_bandwidth(int threads, size_t buffer_bytes = size_t{512} << 20, int repetitions = 10);

// The same over memory already in use (the loaded weights), which it only reads: what the threads get from
// exactly the bytes that token generation streams.
MemoryBandwidth measure_read_bandwidth(int threads, std::span<const uint8_t> region, int repetitions);

}  // namespace tessera::cli
