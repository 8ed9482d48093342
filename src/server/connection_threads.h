// The threads that serve the HTTP connections of `tessera serve` (cpp-httplib runs each connection as one task,
// from accept to close). cpp-httplib's own ThreadPool starts all its threads at once and gives a task to
// whichever idle thread its condition variable wakes, so in time every thread of the pool runs and keeps its
// touched stack and malloc caches: resident memory grows with the pool's size (a thread per request that may be
// queued), not with the load. This one starts threads only as connections need them, up to a maximum, and gives
// each task to the thread that went idle last, so the same few threads stay warm.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera::server {

class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(size_t max_threads);
  ~ConnectionThreads() override;
  ConnectionThreads(const ConnectionThreads&) = delete;
  ConnectionThreads& operator=(const ConnectionThreads&) = delete;

  // Runs the task on the thread that went idle last, else on a new thread while fewer than max_threads exist,
  // else once a thread is free (in the order the tasks came).
  void enqueue(std::function<void()> task) override;
  // Lets every started and queued task finish, then joins the threads. No task may be enqueued after it.
  void shutdown() override;

  size_t n_threads() const;  // started so far
  size_t n_idle() const;

 private:
  struct Idle {
    std::condition_variable wake;
    std::function<void()> task;
    bool stop = false;
  };
  void work(std::function<void()> task);

  const size_t max_threads_;
  mutable std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::vector<Idle*> idle_;                   // the last one went idle last
  std::deque<std::function<void()>> queued_;  // tasks waiting while max_threads are busy
  bool stopping_ = false;
};

}  // namespace tessera::server
