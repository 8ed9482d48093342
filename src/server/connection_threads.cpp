#include "server/connection_threads.h"

#include <stdexcept>
#include <utility>

namespace tessera::server {

ConnectionThreads::ConnectionThreads(size_t max_threads) : max_threads_(max_threads) {
  if (max_threads_ == 0) throw std::invalid_argument("ConnectionThreads needs at least one thread");
}

ConnectionThreads::~ConnectionThreads() { shutdown(); }

void ConnectionThreads::enqueue(std::function<void()> task) {
  const std::lock_guard lock(mutex_);
  if (!idle_.empty()) {
    Idle* idle = idle_.back();
    idle_.pop_back();
    idle->task = std::move(task);
    idle->wake.notify_one();
  } else if (threads_.size() < max_threads_) {
    threads_.emplace_back([this, task = std::move(task)]() mutable { work(std::move(task)); });
  } else {
    queued_.push_back(std::move(task));
  }
}

void ConnectionThreads::work(std::function<void()> task) {
  for (;;) {
    task();
    std::unique_lock lock(mutex_);
    if (!queued_.empty()) {
      task = std::move(queued_.front());
      queued_.pop_front();
      continue;
    }
    if (stopping_) return;
    Idle idle;
    idle_.push_back(&idle);
    idle.wake.wait(lock, [&] { return idle.task || idle.stop; });
    if (!idle.task) return;
    task = std::move(idle.task);
  }
}

void ConnectionThreads::shutdown() {
  std::vector<std::thread> threads;
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
    for (Idle* idle : idle_) {
      idle->stop = true;
      idle->wake.notify_one();
    }
    idle_.clear();
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

size_t ConnectionThreads::n_threads() const {
  const std::lock_guard lock(mutex_);
  return threads_.size();
}

size_t ConnectionThreads::n_idle() const {
  const std::lock_guard lock(mutex_);
  return idle_.size();
}

}  // namespace tessera::server
