// A fixed pool of worker threads for data-parallel loops. A decode step runs a few hundred short parallel loops,
// so workers spin briefly on an epoch counter before sleeping: waking a sleeping thread costs more than a loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace tessera::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads includes the calling thread
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(task, thread) for task in [0, n_tasks), tasks taken dynamically by all threads (the caller too).
  // Returns when all are done. Not reentrant.
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

 private:
  void worker(int thread);
  void run_tasks(int thread);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<int> busy_{0};
  std::atomic<bool> stop_{false};
};

// Physical cores of this machine (logical CPUs / SMT siblings), at least 1.
int physical_core_count();

}  // namespace tessera::cpu
