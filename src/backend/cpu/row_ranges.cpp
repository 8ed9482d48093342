#include "backend/cpu/row_ranges.h"

#include <algorithm>
#include <stdexcept>

namespace tessera::cpu {
namespace {

// A claim is this fraction of the share left: long strides while the share is long, short ones near its end, where
// the threads must finish together.
constexpr int64_t kClaimShare = 4;

// A share's word: refills (16 bits) | begin (24) | end (24). The refill count changes when a thief refills its own
// empty share, so a thief holding an old word of that share can never take from the new range by mistake.
constexpr int kUnitBits = 24;
constexpr uint64_t kUnitMask = (uint64_t{1} << kUnitBits) - 1;
constexpr uint64_t pack(uint64_t refills, int64_t begin, int64_t end) {
  return (refills & 0xffff) << (2 * kUnitBits) | static_cast<uint64_t>(begin) << kUnitBits | static_cast<uint64_t>(end);
}
constexpr uint64_t refills_of(uint64_t bounds) { return bounds >> (2 * kUnitBits); }
constexpr int64_t begin_of(uint64_t bounds) { return static_cast<int64_t>(bounds >> kUnitBits & kUnitMask); }
constexpr int64_t end_of(uint64_t bounds) { return static_cast<int64_t>(bounds & kUnitMask); }

}  // namespace

void RowRanges::reset(std::span<const int64_t> job_rows, int64_t unit_rows, int n_parts, int64_t min_claim_units) {
  if (job_rows.empty() || job_rows.size() > kMaxJobs || unit_rows < 1 || n_parts < 1 || min_claim_units < 1) {
    throw std::logic_error("RowRanges::reset: bad arguments");
  }
  n_jobs_ = job_rows.size();
  unit_rows_ = unit_rows;
  min_claim_units_ = min_claim_units;
  int64_t total = 0;
  for (size_t j = 0; j < n_jobs_; ++j) {
    job_rows_[j] = job_rows[j];
    total += (job_rows[j] + unit_rows - 1) / unit_rows;
    job_end_units_[j] = total;
  }
  if (total > static_cast<int64_t>(kUnitMask)) throw std::length_error("RowRanges::reset: too many row units");
  if (static_cast<int>(shares_.size()) != n_parts) shares_ = std::vector<Share>(n_parts);
  for (int p = 0; p < n_parts; ++p) {
    shares_[p].bounds.store(pack(0, total * p / n_parts, total * (p + 1) / n_parts), std::memory_order_relaxed);
  }
}

bool RowRanges::next(int part, Claim& claim) {
  Share& share = shares_[part];
  for (;;) {
    uint64_t bounds = share.bounds.load(std::memory_order_acquire);
    const int64_t begin = begin_of(bounds), end = end_of(bounds);
    if (begin >= end) {
      if (!steal(part)) return false;
      continue;
    }
    size_t job = 0;
    while (job_end_units_[job] <= begin) ++job;
    const int64_t take =
        std::min({std::max(min_claim_units_, (end - begin) / kClaimShare), end - begin, job_end_units_[job] - begin});
    if (!share.bounds.compare_exchange_weak(bounds, pack(refills_of(bounds), begin + take, end), std::memory_order_acq_rel)) continue;
    const int64_t job_first = job == 0 ? 0 : job_end_units_[job - 1];
    claim.job = job;
    claim.row_begin = (begin - job_first) * unit_rows_;
    claim.row_end = std::min(job_rows_[job], (begin + take - job_first) * unit_rows_);
    return true;
  }
}

bool RowRanges::steal(int part) {
  for (;;) {
    int victim = -1;
    int64_t most = 0;
    uint64_t victim_bounds = 0;
    for (int p = 0; p < static_cast<int>(shares_.size()); ++p) {
      if (p == part) continue;
      const uint64_t bounds = shares_[p].bounds.load(std::memory_order_acquire);
      if (end_of(bounds) - begin_of(bounds) > most) {
        most = end_of(bounds) - begin_of(bounds);
        victim = p;
        victim_bounds = bounds;
      }
    }
    if (victim < 0) return false;
    // The owner keeps the front half, where its stream is; one unit left goes to the thief whole.
    const int64_t begin = begin_of(victim_bounds), end = end_of(victim_bounds), mid = begin + (end - begin) / 2;
    if (!shares_[victim].bounds.compare_exchange_strong(victim_bounds, pack(refills_of(victim_bounds), begin, mid), std::memory_order_acq_rel)) {
      continue;
    }
    // Only this thread writes its own empty share, and no thief takes from an empty one.
    Share& own = shares_[part];
    own.bounds.store(pack(refills_of(own.bounds.load(std::memory_order_relaxed)) + 1, mid, end),
                     std::memory_order_release);
    return true;
  }
}

}  // namespace tessera::cpu
