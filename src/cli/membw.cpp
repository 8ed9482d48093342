#include "cli/membw.h"

#include <fmt/format.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

namespace tessera::cli {
namespace {

// Each reader folds its bytes into a value that is returned, so the loads cannot be optimised away. Four
// independent accumulators keep several loads in flight.
using ReadFn = uint64_t (*)(const uint8_t* data, size_t n);

__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* data, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 256 <= n; i += 256) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(data + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(data + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(data + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(data + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t folded = 0;
  for (uint64_t lane : lanes) folded ^= lane;
  return folded;
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* data, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= n; i += 128) {
    a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

uint64_t read_scalar(const uint8_t* data, size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    uint64_t v[4];
    std::memcpy(v, data + i, sizeof v);
    a0 ^= v[0];
    a1 ^= v[1];
    a2 ^= v[2];
    a3 ^= v[3];
  }
  return a0 ^ a1 ^ a2 ^ a3;
}

// An anonymous mapping (not malloc) so the pages go back to the system at once: a benchmark that probes first
// and then loads a model must not carry the probe's buffer in its peak resident memory.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map " + std::to_string(bytes) + " bytes for the bandwidth probe");
    madvise(p, bytes, MADV_HUGEPAGE);  // fewer TLB misses; the probe measures DRAM, not page walks
    data_ = static_cast<uint8_t*>(p);
  }
  ~Buffer() { munmap(data_, bytes_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() const { return data_; }

 private:
  size_t bytes_;
  uint8_t* data_;
};

// Times `repetitions` passes of every thread over its share of [base, base + threads * share), after `prepare`
// (run by each thread on its own share first) and one untimed pass.
template <class Prepare>
MemoryBandwidth time_reads(int threads, const uint8_t* base, size_t share, int repetitions, Prepare prepare) {
  if (repetitions < 1) throw std::invalid_argument("the bandwidth probe needs at least one repetition");
  MemoryBandwidth result;
  result.threads = threads;
  result.repetitions = repetitions;
  result.buffer_bytes = share * threads;
  ReadFn read = read_scalar;
  result.method = "scalar";
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    read = read_avx512;
    result.method = "avx512";
  } else if (__builtin_cpu_supports("avx2")) {
    read = read_avx2;
    result.method = "avx2";
  }

  std::vector<double> seconds(repetitions);
  std::vector<uint64_t> sink(threads);
  std::barrier sync(threads);
  auto worker = [&](int t) {
    const uint8_t* mine = base + share * t;
    prepare(t, share);
    sink[t] ^= read(mine, share);  // warm-up pass
    for (int r = 0; r < repetitions; ++r) {
      sync.arrive_and_wait();
      const auto start = std::chrono::steady_clock::now();
      sink[t] ^= read(mine, share);
      sync.arrive_and_wait();
      if (t == 0) seconds[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
  };
  {
    // Every thread must exist before any waits at the barrier: one that cannot be started would leave the others
    // waiting for it forever.
    std::atomic<int> gate{0};  // 0: wait, 1: run, -1: leave
    auto gated = [&](int t) {
      gate.wait(0);
      if (gate.load() == 1) worker(t);
    };
    std::vector<std::jthread> pool;
    try {
      for (int t = 1; t < threads; ++t) pool.emplace_back(gated, t);
    } catch (const std::system_error& e) {
      gate.store(-1);
      gate.notify_all();
      throw std::runtime_error(fmt::format("cannot start thread {} of {} for the bandwidth probe: {}; use fewer "
                                           "--threads or raise the process limit", pool.size() + 2, threads,
                                           e.code().message()));
    }
    gate.store(1);
    gate.notify_all();
    worker(0);
  }
  // Keep the folded values observable so the reads stay in the program.
  asm volatile("" : : "r"(sink.data()) : "memory");

  std::vector<double> rates;
  for (double s : seconds) rates.push_back(static_cast<double>(result.buffer_bytes) / s / 1e9);
  std::sort(rates.begin(), rates.end());
  result.best_gb_s = rates.back();
  result.median_gb_s = rates[rates.size() / 2];
  return result;
}

// Each thread's share: a whole number of 4 KiB pages (so of the readers' 256-byte steps).
size_t share_of(size_t bytes, int threads) {
  if (threads < 1) throw std::invalid_argument("the bandwidth probe needs at least one thread");
  const size_t share = bytes / threads / 4096 * 4096;
  if (share == 0) throw std::invalid_argument("the bandwidth probe buffer is too small for the thread count");
  return share;
}

}  // namespace

MemoryBandwidth measure_read_bandwidth(int threads, size_t buffer_bytes, int repetitions) {
  const size_t share = share_of(buffer_bytes, threads);
  Buffer buffer(share * threads);
  return time_reads(threads, buffer.data(), share, repetitions, [&](int t, size_t n) {
    std::memset(buffer.data() + n * t, t + 1, n);  // first touch by the thread that reads it
  });
}

MemoryBandwidth measure_read_bandwidth(int threads, std::span<const uint8_t> region, int repetitions) {
  // The vector loads are aligned: start at the region's first 64-byte boundary.
  const size_t skip = (64 - reinterpret_cast<uintptr_t>(region.data()) % 64) % 64;
  if (region.size() <= skip) throw std::invalid_argument("the bandwidth probe region is empty");
  const size_t share = share_of(region.size() - skip, threads);
  return time_reads(threads, region.data() + skip, share, repetitions, [](int, size_t) {});
}

}  // namespace tessera::cli
