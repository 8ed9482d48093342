// The read-bandwidth probe over memory in use (the loaded weights): what it reads, and that it only reads.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cli/membw.h"

namespace {

using tessera::cli::measure_read_bandwidth;
using tessera::cli::MemoryBandwidth;

TEST(Membw, ReadsAnUnalignedRegionInWholePagesPerThreadAndLeavesItUnchanged) {
  std::vector<uint8_t> memory((size_t{3} << 20) + 200);
  for (size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<uint8_t>(i * 131 + 7);
  const std::vector<uint8_t> before = memory;
  // Start one byte past a 64-byte boundary: the probe skips to the next one (63 bytes).
  const uint8_t* start = memory.data() + (64 - reinterpret_cast<uintptr_t>(memory.data()) % 64) % 64 + 1;
  const std::span<const uint8_t> region(start, memory.data() + memory.size() - start);
  const MemoryBandwidth bw = measure_read_bandwidth(3, region, 2);

  const size_t per_thread = (region.size() - 63) / 3 / 4096 * 4096;
  EXPECT_EQ(bw.buffer_bytes, 3 * per_thread);
  EXPECT_EQ(bw.threads, 3);
  EXPECT_EQ(bw.repetitions, 2);
  EXPECT_GT(bw.median_gb_s, 0.0);
  EXPECT_GE(bw.best_gb_s, bw.median_gb_s);
  EXPECT_EQ(memory, before);
}

TEST(Membw, RefusesARegionWithLessThanAPagePerThread) {
  std::vector<uint8_t> memory(3 * 4096);
  EXPECT_THROW(measure_read_bandwidth(4, std::span<const uint8_t>(memory), 1), std::invalid_argument);
  EXPECT_THROW(measure_read_bandwidth(1, std::span<const uint8_t>(memory.data(), 0), 1), std::invalid_argument);
  EXPECT_THROW(measure_read_bandwidth(1, std::span<const uint8_t>(memory), 0), std::invalid_argument);
}

}  // namespace
