// ConnectionThreads: threads start only as tasks need them, an idle thread is reused (the last one to go idle
// first), no more than the maximum ever run, and shutdown finishes every task it was given.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "server/connection_threads.h"

namespace tessera::server {
namespace {

using namespace std::chrono_literals;

// Polls until `done` holds; fails the test after five seconds.
template <class Predicate>
void wait_until(Predicate done) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!done()) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "timed out";
    std::this_thread::sleep_for(1ms);
  }
}

// Tasks that block until released, recording the threads they ran on.
class Gate {
 public:
  std::function<void()> task() {
    return [this] {
      std::unique_lock lock(mutex_);
      ++started_;
      threads_.insert(std::this_thread::get_id());
      open_.wait(lock, [&] { return released_; });
      ++finished_;
    };
  }
  void release() {
    {
      const std::lock_guard lock(mutex_);
      released_ = true;
    }
    open_.notify_all();
  }
  int started() {
    const std::lock_guard lock(mutex_);
    return started_;
  }
  int finished() {
    const std::lock_guard lock(mutex_);
    return finished_;
  }
  size_t distinct_threads() {
    const std::lock_guard lock(mutex_);
    return threads_.size();
  }

 private:
  std::mutex mutex_;
  std::condition_variable open_;
  bool released_ = false;
  int started_ = 0;
  int finished_ = 0;
  std::set<std::thread::id> threads_;
};

TEST(ConnectionThreads, StartsThreadsOnlyAsTasksNeedThem) {
  ConnectionThreads pool(64);
  EXPECT_EQ(pool.n_threads(), 0u);
  Gate gate;
  for (int i = 0; i < 3; ++i) pool.enqueue(gate.task());
  wait_until([&] { return gate.started() == 3; });
  EXPECT_EQ(pool.n_threads(), 3u);
  gate.release();
  wait_until([&] { return pool.n_idle() == 3; });
  EXPECT_EQ(gate.finished(), 3);
}

TEST(ConnectionThreads, ReusesTheThreadThatWentIdleLast) {
  ConnectionThreads pool(8);
  std::mutex mutex;
  std::vector<std::thread::id> ran_on;
  auto record = [&] {
    const std::lock_guard lock(mutex);
    ran_on.push_back(std::this_thread::get_id());
  };
  // Two threads, then one task after another: each runs on the thread that finished last, and no third starts.
  Gate gate;
  pool.enqueue(gate.task());
  pool.enqueue(gate.task());
  wait_until([&] { return gate.started() == 2; });
  gate.release();
  wait_until([&] { return pool.n_idle() == 2; });
  for (int i = 0; i < 20; ++i) {
    pool.enqueue(record);
    wait_until([&] {
      const std::lock_guard lock(mutex);
      return ran_on.size() == static_cast<size_t>(i + 1);
    });
    wait_until([&] { return pool.n_idle() == 2; });
  }
  EXPECT_EQ(pool.n_threads(), 2u);
  EXPECT_EQ(std::set<std::thread::id>(ran_on.begin(), ran_on.end()).size(), 1u);
}

TEST(ConnectionThreads, QueuesTasksBeyondTheMaximumAndRunsThemAll) {
  ConnectionThreads pool(4);
  Gate gate;
  for (int i = 0; i < 20; ++i) pool.enqueue(gate.task());
  wait_until([&] { return gate.started() == 4; });
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(gate.started(), 4) << "only four threads may run at once";
  EXPECT_EQ(pool.n_threads(), 4u);
  gate.release();
  wait_until([&] { return gate.finished() == 20; });
  EXPECT_EQ(gate.distinct_threads(), 4u);
}

TEST(ConnectionThreads, ShutdownFinishesEveryTaskItWasGiven) {
  std::atomic<int> done{0};
  {
    ConnectionThreads pool(2);
    for (int i = 0; i < 10; ++i) {
      pool.enqueue([&] {
        std::this_thread::sleep_for(2ms);
        ++done;
      });
    }
    pool.shutdown();
    EXPECT_EQ(done.load(), 10);
    EXPECT_EQ(pool.n_threads(), 0u);
  }
  EXPECT_EQ(done.load(), 10);
}

TEST(ConnectionThreads, RefusesZeroThreads) { EXPECT_THROW(ConnectionThreads(0), std::invalid_argument); }

}  // namespace
}  // namespace tessera::server
