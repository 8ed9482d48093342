#include "backend/cpu/thread_pool.h"

#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tessera::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spin this many rounds before sleeping on the epoch: about the gap between two loops of a decode step.
constexpr int kSpinRounds = 1 << 14;

// The task index of a finished epoch's claim word: no loop has that many tasks.
constexpr uint64_t kClosed = 0xffffffffu;

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int t = 1; t < n_threads_; ++t) {
    try {
      workers_.emplace_back([this, t] { worker(t); });
    } catch (const std::system_error& e) {
      stop_workers();
      throw std::runtime_error("cannot start thread " + std::to_string(t + 1) + " of " + std::to_string(n_threads_) +
                               ": " + e.code().message() + "; use fewer threads (--threads) or raise the process limit");
    }
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  stop_.store(true);
  epoch_.fetch_add(1);  // no job under this epoch: woken workers see stop_ and leave
  epoch_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks(uint32_t epoch, int thread) {
  uint64_t claim = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(claim >> 32) != epoch) return;
    const int64_t task = static_cast<int64_t>(claim & 0xffffffffu);
    if (task >= n_tasks_) return;
    if (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel)) continue;
    (*job_)(task, thread);
    done_.fetch_add(1, std::memory_order_acq_rel);
    claim = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int thread) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t now = epoch_.load(std::memory_order_acquire);
    for (int i = 0; now == seen && i < kSpinRounds; ++i) {
      cpu_relax();
      now = epoch_.load(std::memory_order_acquire);
    }
    if (now == seen) {
      epoch_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = now;
    if (stop_.load()) return;
    run_tasks(now, thread);
  }
}

void ThreadPool::parallel_for(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (n_threads_ == 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  if (n_tasks >= static_cast<int64_t>(kClosed)) throw std::length_error("parallel_for: too many tasks");
  job_ = &fn;
  n_tasks_ = n_tasks;
  done_.store(0, std::memory_order_relaxed);
  const uint32_t epoch = epoch_.load(std::memory_order_relaxed) + 1;
  claim_.store(static_cast<uint64_t>(epoch) << 32, std::memory_order_release);
  epoch_.store(epoch, std::memory_order_release);
  epoch_.notify_all();
  run_tasks(epoch, 0);
  // Tasks claimed by other threads may still be running; yield while waiting so that they can run on a busy
  // machine.
  for (int spins = 0; done_.load(std::memory_order_acquire) != n_tasks; ++spins) {
    if (spins < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
  // Close this epoch before the next loop rewrites job_ and n_tasks_: a worker may still hold this epoch's last
  // claim, and would otherwise compare its task index with the next loop's (larger) count and win the
  // compare-exchange on the unchanged claim word, running a task twice.
  claim_.store(static_cast<uint64_t>(epoch) << 32 | kClosed, std::memory_order_release);
}

}  // namespace tessera::cpu
