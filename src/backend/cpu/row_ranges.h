// Work sharing for one parallel loop over the rows of a few matrices (a decode step's matmuls). Each thread starts
// on its own contiguous share of the rows and walks it front to back, in claims that shrink with what is left of
// it; a thread whose share is done takes the back half of the largest share left. So each thread reads one stream
// of weights per loop, as the read-bandwidth probe does, instead of hopping between chunks, and a thread that the
// machine stalls loses its rows to the other threads instead of holding up the loop.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

namespace tessera::cpu {

class RowRanges {
 public:
  static constexpr size_t kMaxJobs = 4;

  struct Claim {
    size_t job;
    int64_t row_begin;
    int64_t row_end;
  };

  // Rows [0, job_rows[j]) of each job, in units of unit_rows (a job's last unit may be short), over n_parts
  // shares (at most 2^24 units in all). A claim takes a quarter of what is left of its share, at least min_claim_units, and never spans two
  // jobs.
  void reset(std::span<const int64_t> job_rows, int64_t unit_rows, int n_parts, int64_t min_claim_units);

  // The next rows for share `part` (the loop's task index): from its own share, else stolen. False when no rows
  // are left anywhere. Safe to call from every thread at once, each with its own part.
  bool next(int part, Claim& claim);

 private:
  // A share's unclaimed units [begin, end) in one word (row_ranges.cpp), so that its owner and a thief agree on it.
  struct alignas(64) Share {
    std::atomic<uint64_t> bounds{0};
  };
  bool steal(int part);

  std::vector<Share> shares_;
  std::array<int64_t, kMaxJobs> job_rows_{};
  std::array<int64_t, kMaxJobs> job_end_units_{};  // cumulative
  size_t n_jobs_ = 0;
  int64_t unit_rows_ = 1;
  int64_t min_claim_units_ = 1;
};

}  // namespace tessera::cpu
