// A fixed pool of worker threads for data-parallel loops. A decode step runs a few hundred short parallel loops,
// so workers spin briefly on an epoch counter before sleeping: waking a sleeping thread costs more than a loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace tessera::cpu {

class ThreadPool {
 public:
  // n_threads includes the calling thread. Throws std::runtime_error naming the count when the system refuses to
  // start one (process limit, memory).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(task, thread) for task in [0, n_tasks), tasks taken dynamically by all threads (the caller too).
  // Returns when all are done. Not reentrant.
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

 private:
  void worker(int thread);
  void stop_workers();
  void run_tasks(uint32_t epoch, int thread);

  int n_threads_;
  std::vector<std::thread> workers_;
  // Hand-off: `claim_` holds (job epoch << 32 | next task index). A worker claims a task with a
  // compare-exchange that also checks the epoch, so a worker that wakes late can never run a task of a newer
  // job with an older job's function; the caller waits for finished tasks, not for every worker to wake, so a
  // descheduled worker (an oversubscribed machine) does not stall the loop.
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tessera::cpu
