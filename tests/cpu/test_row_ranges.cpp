#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "backend/cpu/row_ranges.h"
#include "backend/cpu/thread_pool.h"

namespace tessera::cpu {
namespace {

// Rows claimed per job, counted by every claim; each row must be claimed exactly once.
struct Coverage {
  explicit Coverage(std::span<const int64_t> job_rows) {
    for (int64_t rows : job_rows) counts.emplace_back(rows);
  }
  void add(const RowRanges::Claim& c) {
    ASSERT_LT(c.job, counts.size());
    ASSERT_LT(c.row_begin, c.row_end);
    ASSERT_LE(c.row_end, static_cast<int64_t>(counts[c.job].size()));
    for (int64_t r = c.row_begin; r < c.row_end; ++r) counts[c.job][r].fetch_add(1, std::memory_order_relaxed);
  }
  void expect_each_row_once() const {
    for (size_t j = 0; j < counts.size(); ++j) {
      for (size_t r = 0; r < counts[j].size(); ++r) ASSERT_EQ(counts[j][r].load(), 1) << "job " << j << " row " << r;
    }
  }
  std::vector<std::vector<std::atomic<int>>> counts;
};

TEST(RowRanges, OnePartWalksItsRowsInOrderInShrinkingClaims) {
  RowRanges ranges;
  const int64_t rows[] = {1000, 37};
  ranges.reset(rows, 16, 1, 2);
  RowRanges::Claim c;
  std::vector<RowRanges::Claim> claims;
  while (ranges.next(0, c)) claims.push_back(c);
  ASSERT_FALSE(claims.empty());
  // Units: 63 (the last of 8 rows) for job 0, then 3 (the last of 5) for job 1.
  EXPECT_EQ(claims.front().job, 0u);
  EXPECT_EQ(claims.front().row_begin, 0);
  EXPECT_EQ(claims.front().row_end, 66 / 4 * 16);  // a quarter of the share
  for (size_t i = 1; i < claims.size(); ++i) {
    const RowRanges::Claim& prev = claims[i - 1];
    if (claims[i].job == prev.job) {
      EXPECT_EQ(claims[i].row_begin, prev.row_end);
      EXPECT_LE(claims[i].row_end - claims[i].row_begin, prev.row_end - prev.row_begin);
      EXPECT_GE(claims[i].row_end - claims[i].row_begin, std::min<int64_t>(32, rows[prev.job] - claims[i].row_begin));
    } else {
      EXPECT_EQ(prev.row_end, rows[prev.job]);  // no claim spans two jobs
      EXPECT_EQ(claims[i].row_begin, 0);
    }
  }
  EXPECT_EQ(claims.back().job, 1u);
  EXPECT_EQ(claims.back().row_end, 37);
  EXPECT_FALSE(ranges.next(0, c));
}

TEST(RowRanges, APartWhoseThreadNeverComesIsTakenByTheOthers) {
  RowRanges ranges;
  const int64_t rows[] = {4096, 512, 512};
  ranges.reset(rows, 16, 3, 1);
  Coverage coverage(rows);
  RowRanges::Claim c;
  // Part 0 runs alone: it finishes its share, then steals all of parts 1 and 2.
  while (ranges.next(0, c)) coverage.add(c);
  EXPECT_FALSE(ranges.next(1, c));
  EXPECT_FALSE(ranges.next(2, c));
  coverage.expect_each_row_once();
}

TEST(RowRanges, AThiefTakesTheBackHalfOfWhatIsLeft) {
  RowRanges ranges;
  const int64_t rows[] = {64 * 16};
  ranges.reset(rows, 16, 2, 1);  // shares: units [0, 32) and [32, 64)
  RowRanges::Claim c;
  while (ranges.next(0, c)) {
    if (c.row_end == 32 * 16) break;  // part 0 has claimed its whole share
  }
  ASSERT_TRUE(ranges.next(1, c));  // part 1 claims a quarter of its share: units [32, 40)
  EXPECT_EQ(c.row_begin, 32 * 16);
  EXPECT_EQ(c.row_end, 40 * 16);
  ASSERT_TRUE(ranges.next(0, c));  // part 0 steals the back half of [40, 64): [52, 64), and claims from its front
  EXPECT_EQ(c.row_begin, 52 * 16);
  ASSERT_TRUE(ranges.next(1, c));  // part 1 goes on with what it kept
  EXPECT_EQ(c.row_begin, 40 * 16);
  EXPECT_LE(c.row_end, 52 * 16);
}

// All threads at once, over many loops of the shapes a decode step uses: every row exactly once.
TEST(RowRanges, ConcurrentPartsClaimEveryRowExactlyOnce) {
  for (int threads : {2, 3, 5}) {
    ThreadPool pool(threads);
    RowRanges ranges;
    for (int loop = 0; loop < 300; ++loop) {
      const int64_t rows[] = {2048 + 16 * (loop % 7), 256 + loop % 5, 1 + loop % 40};
      const size_t n_jobs = 1 + loop % 3;
      const std::span<const int64_t> jobs(rows, n_jobs);
      ranges.reset(jobs, 16, threads, 1 + loop % 4);
      Coverage coverage(jobs);
      pool.parallel_for(threads, [&](int64_t part, int) {
        RowRanges::Claim c;
        while (ranges.next(static_cast<int>(part), c)) coverage.add(c);
      });
      coverage.expect_each_row_once();
      if (HasFatalFailure()) return;
    }
  }
}

TEST(RowRanges, RejectsBadArguments) {
  RowRanges ranges;
  const int64_t rows[] = {16, 16, 16, 16, 16};
  EXPECT_THROW(ranges.reset(std::span<const int64_t>(), 16, 2, 1), std::logic_error);
  EXPECT_THROW(ranges.reset(rows, 16, 2, 1), std::logic_error);  // more jobs than kMaxJobs
  EXPECT_THROW(ranges.reset(std::span(rows, 1), 0, 2, 1), std::logic_error);
  EXPECT_THROW(ranges.reset(std::span(rows, 1), 16, 0, 1), std::logic_error);
  const int64_t huge[] = {int64_t{1} << 40};
  EXPECT_THROW(ranges.reset(huge, 16, 2, 1), std::length_error);
}

}  // namespace
}  // namespace tessera::cpu
