#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "backend/cpu/thread_pool.h"
#include "util/cpu_info.h"

namespace tessera::cpu {
namespace {

// Many short loops back to back (as in a decode step): every task runs exactly once per loop.
TEST(ThreadPool, EveryTaskRunsExactlyOnceAcrossManyLoops) {
  ThreadPool pool(3);
  for (int loop = 0; loop < 2000; ++loop) {
    const int64_t n = 1 + loop % 17;
    std::vector<std::atomic<int>> runs(n);
    pool.parallel_for(n, [&](int64_t task, int thread) {
      ASSERT_GE(thread, 0);
      ASSERT_LT(thread, 3);
      runs[task].fetch_add(1);
    });
    for (int64_t t = 0; t < n; ++t) ASSERT_EQ(runs[t].load(), 1) << "loop " << loop << ", task " << t;
  }
}

// A loop with more tasks right after one with few: a worker still holding the previous loop's exhausted claim
// must not take the new loop's larger task count for its own (it would run a task twice, or the caller would wait
// forever for a count it had already passed).
TEST(ThreadPool, ShortLoopThenLongLoopNeverRunsATaskTwice) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> runs(64);
  for (int loop = 0; loop < 100000; ++loop) {
    const int64_t n = loop % 2 == 0 ? 1 + loop % 3 : 64;
    for (int64_t t = 0; t < n; ++t) runs[t].store(0, std::memory_order_relaxed);
    pool.parallel_for(n, [&](int64_t task, int) { runs[task].fetch_add(1, std::memory_order_relaxed); });
    for (int64_t t = 0; t < n; ++t) ASSERT_EQ(runs[t].load(), 1) << "loop " << loop << ", task " << t;
  }
}

TEST(ThreadPool, SingleThreadRunsInOrder) {
  ThreadPool pool(1);
  std::vector<int64_t> order;
  pool.parallel_for(5, [&](int64_t task, int) { order.push_back(task); });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_GE(util::physical_core_count(), 1);
}

}  // namespace
}  // namespace tessera::cpu
