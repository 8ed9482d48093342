#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "backend/cpu/thread_pool.h"

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

TEST(ThreadPool, SingleThreadRunsInOrder) {
  ThreadPool pool(1);
  std::vector<int64_t> order;
  pool.parallel_for(5, [&](int64_t task, int) { order.push_back(task); });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_GE(physical_core_count(), 1);
}

}  // namespace
}  // namespace tessera::cpu
