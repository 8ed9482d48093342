// Continuous batching: moves any number of requests (request.h) along, one engine step at a time. Each step is
// one forward call made of every running request's next token (decode) and chunks of prompts (prefill) up to a
// token budget, so a long prompt never stalls the streams around it. Requests are admitted first come, first
// served, between steps, as sequences and KV blocks allow, and retired the moment they finish. When the cache
// cannot hold every running sequence's next token, the newest is preempted: its blocks are freed and it waits at
// the head of the queue, to resume with the same output (most of its blocks come back from the prefix cache).
// A request that asked for context shift continues past a full context: its oldest tokens after the kept ones
// are dropped (Engine::shift_context) before its next step.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/request.h"

namespace tessera::engine {

struct SchedulerOptions {
  int max_sequences = 256;    // requests running at once
  int max_step_tokens = 512;  // tokens in one forward call (decode tokens first, then prompt chunks)
};

class Scheduler {
 public:
  Scheduler(Engine& engine, SchedulerOptions options);

  // Queues a request; safe from any thread. Throws std::invalid_argument, without queueing it, when its prompt
  // can never run: longer than the context (with room for one generated token) or than the whole KV cache.
  void add(std::shared_ptr<Request> request);
  // Requests that share one prompt (n > 1 choices): the first evaluates it, the others then take its blocks from
  // the prefix cache instead of evaluating it again.
  void add_group(std::vector<std::shared_ptr<Request>> requests);

  // One engine step: takes queued requests, ends cancelled ones, admits, runs the step, samples, retires.
  // Returns false when there was nothing to do.
  bool step();
  // Sequences in the last step's forward call (0 when it made none); read on the thread that calls step().
  size_t last_step_sequences() const { return last_step_sequences_; }
  // Ends every request: cancelled (at shutdown), or failed with `message` (the engine broke).
  void cancel_all();
  void fail_all(const std::string& message);

  // Safe from any thread (as of the end of the last step).
  size_t n_running() const { return n_running_.load(std::memory_order_relaxed); }
  size_t n_waiting() const { return n_waiting_.load(std::memory_order_relaxed); }

 private:
  struct Waiting {
    std::shared_ptr<Request> request;
    std::vector<std::shared_ptr<Request>> followers;  // admitted once this one's prompt is in the cache
  };
  void validate(const Request& request) const;
  void take_inbox();
  // Shifts the context of running requests that asked for it and whose next token no longer fits.
  void shift_full_contexts();
  void admit();
  void preempt(size_t running_index);
  void retire_finished();
  void update_counts();
  void end_all(const std::function<void(Request&)>& end);

  Engine& engine_;
  SchedulerOptions options_;
  mutable std::mutex inbox_mutex_;
  std::vector<Waiting> inbox_;
  std::deque<Waiting> waiting_;
  struct Running {
    std::shared_ptr<Request> request;
    std::vector<std::shared_ptr<Request>> followers;
  };
  std::vector<Running> running_;  // in admission order
  uint64_t next_order_ = 0;
  std::vector<Engine::Chunk> chunks_;
  std::vector<size_t> chunk_owner_;  // running_ index of each chunk
  size_t last_step_sequences_ = 0;
  std::atomic<size_t> n_running_{0}, n_waiting_{0};
};

}  // namespace tessera::engine
