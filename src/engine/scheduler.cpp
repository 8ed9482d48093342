#include "engine/scheduler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tessera::engine {

Scheduler::Scheduler(Engine& engine, SchedulerOptions options) : engine_(engine), options_(options) {
  if (options_.max_sequences < 1) throw std::invalid_argument("the scheduler needs at least one sequence");
  if (options_.max_step_tokens < 1) throw std::invalid_argument("the scheduler needs at least one token per step");
}

void Scheduler::validate(const Request& request) const {
  const size_t n = request.tokens().size();
  if (n >= static_cast<size_t>(engine_.n_ctx())) {
    throw std::invalid_argument("the prompt has " + std::to_string(n) + " tokens but the context holds " +
                                std::to_string(engine_.n_ctx()) +
                                " (including at least one generated token); raise --ctx-size or shorten it");
  }
  if (engine_.kv_tokens_held(static_cast<int32_t>(n)) >= engine_.kv().n_slots()) {
    throw std::invalid_argument("the prompt has " + std::to_string(n) + " tokens but the whole KV cache holds " +
                                std::to_string(engine_.kv().n_slots()));
  }
  const RequestOptions& o = request.options();
  if (o.context_shift) {
    // A shift drops half of what follows the kept tokens, in whole blocks of 16.
    if (o.keep > engine_.n_ctx() - 2 * engine_.kv().block_size()) {
      throw std::invalid_argument("keeping " + std::to_string(o.keep) + " tokens leaves a context shift nothing to " +
                                  "drop in the " + std::to_string(engine_.n_ctx()) + "-token context");
    }
    if (engine_.window() > 0 && o.keep != engine_.n_sink()) {
      throw std::invalid_argument("with a sliding window, a context shift keeps exactly the attention sinks (" +
                                  std::to_string(engine_.n_sink()) + " tokens), not " + std::to_string(o.keep));
    }
  }
}

void Scheduler::add(std::shared_ptr<Request> request) { add_group({std::move(request)}); }

void Scheduler::add_group(std::vector<std::shared_ptr<Request>> requests) {
  if (requests.empty()) return;
  for (const auto& r : requests) validate(*r);
  Waiting w{requests.front(), {requests.begin() + 1, requests.end()}};
  const std::lock_guard lock(inbox_mutex_);
  inbox_.push_back(std::move(w));
  n_waiting_.fetch_add(requests.size(), std::memory_order_relaxed);
}

void Scheduler::take_inbox() {
  const std::lock_guard lock(inbox_mutex_);
  for (Waiting& w : inbox_) waiting_.push_back(std::move(w));
  inbox_.clear();
}

void Scheduler::admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_sequences) {
    Waiting& w = waiting_.front();
    Request& r = *w.request;
    const int32_t seq = engine_.new_sequence();
    const int32_t n_tokens = static_cast<int32_t>(r.tokens_.size());
    const int32_t cached = engine_.attach_prefix(seq, r.tokens_, n_tokens - 1);
    // Room for the rest of its tokens, and a block of headroom for every running request's next decode step.
    const int32_t needed = engine_.peak_blocks_needed(seq, n_tokens - cached);
    if (!running_.empty() && needed + static_cast<int32_t>(running_.size()) > engine_.kv().available_blocks()) {
      engine_.free_sequence(seq);
      return;
    }
    r.seq_ = seq;
    r.n_computed_ = cached;
    if (r.timings_.preemptions == 0) r.timings_.cached_prompt_tokens = cached;
    r.admitted_order_ = next_order_++;
    running_.push_back({std::move(w.request), std::move(w.followers)});
    waiting_.pop_front();
  }
}

void Scheduler::preempt(size_t index) {
  Running running = std::move(running_[index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
  Request& r = *running.request;
  engine_.free_sequence(r.seq_);
  r.seq_ = -1;
  r.n_computed_ = 0;
  ++r.timings_.preemptions;
  waiting_.push_front({std::move(running.request), std::move(running.followers)});
}

void Scheduler::shift_full_contexts() {
  for (Running& running : running_) {
    Request& r = *running.request;
    if (!r.options_.context_shift || r.finished() || r.n_computed_ < engine_.n_ctx() ||
        static_cast<int32_t>(r.tokens_.size()) == r.n_computed_) {
      continue;
    }
    try {
      const int32_t keep = r.options_.keep;
      const int32_t dropped = engine_.shift_context(r.seq_, keep);
      r.tokens_.erase(r.tokens_.begin() + keep, r.tokens_.begin() + keep + dropped);
      r.n_computed_ -= dropped;
      ++r.timings_.context_shifts;
    } catch (const ContextFull&) {
      r.finish(FinishReason::ContextFull);
    } catch (const std::exception& e) {
      r.fail(e.what());
    }
  }
}

void Scheduler::retire_finished() {
  for (size_t i = 0; i < running_.size();) {
    Running& running = running_[i];
    if (!running.request->finished()) {
      ++i;
      continue;
    }
    engine_.free_sequence(running.request->seq_);
    running.request->seq_ = -1;
    // Followers of a request that ended before its prompt was evaluated queue on their own.
    for (auto it = running.followers.rbegin(); it != running.followers.rend(); ++it) waiting_.push_front({*it, {}});
    running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

bool Scheduler::step() {
  take_inbox();
  last_step_sequences_ = 0;
  for (Running& running : running_) {
    if (running.request->cancel_requested()) running.request->finish(FinishReason::Cancelled);
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (!it->request->cancel_requested()) {
      ++it;
      continue;
    }
    it->request->finish(FinishReason::Cancelled);
    std::vector<std::shared_ptr<Request>> followers = std::move(it->followers);
    it = waiting_.erase(it);
    for (auto f = followers.rbegin(); f != followers.rend(); ++f) it = waiting_.insert(it, {*f, {}});
  }
  shift_full_contexts();
  retire_finished();
  admit();
  if (running_.empty()) {
    update_counts();
    return false;
  }

  // Decode tokens first, then prompt chunks in admission order, within the step's token budget.
  chunks_.clear();
  chunk_owner_.clear();
  int budget = options_.max_step_tokens;
  const auto now = Request::Clock::now();
  for (const bool decode_pass : {true, false}) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      Request& r = *running_[i].request;
      const int32_t uncomputed = static_cast<int32_t>(r.tokens_.size()) - r.n_computed_;
      if ((uncomputed == 1) != decode_pass) continue;
      const int32_t n = std::min(uncomputed, budget);
      if (!r.prompt_started_) {
        r.prompt_started_ = true;
        r.prompt_started_at_ = now;
      }
      chunks_.push_back({r.seq_, std::span(r.tokens_).subspan(r.n_computed_, n),
                         n == uncomputed ? LogitsWanted::Last : LogitsWanted::None});
      chunk_owner_.push_back(i);
      budget -= n;
    }
  }

  // Fit the step in the cache: preempt the newest requests, or, where one is left, shorten its prompt chunk.
  while (engine_.blocks_needed(chunks_) > engine_.kv().available_blocks()) {
    if (chunks_.size() > 1) {
      size_t newest = 0;
      for (size_t c = 1; c < chunks_.size(); ++c) {
        if (running_[chunk_owner_[c]].request->admitted_order_ > running_[chunk_owner_[newest]].request->admitted_order_) {
          newest = c;
        }
      }
      const size_t owner = chunk_owner_[newest];
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(newest));
      chunk_owner_.erase(chunk_owner_.begin() + static_cast<std::ptrdiff_t>(newest));
      preempt(owner);
      for (size_t& o : chunk_owner_) o -= o > owner ? 1 : 0;
      continue;
    }
    Engine::Chunk& chunk = chunks_.front();
    const KvBlocks& kv = engine_.kv();
    const int32_t room = static_cast<int32_t>(kv.blocks(chunk.seq).size()) * kv.block_size() -
                         kv.length(chunk.seq) + kv.available_blocks() * kv.block_size();
    if (room < 1) {
      // Nothing else holds the cache and still no token fits: this request cannot continue.
      running_[chunk_owner_.front()].request->finish(FinishReason::ContextFull);
      chunks_.clear();
      break;
    }
    chunk.tokens = chunk.tokens.first(std::min<size_t>(chunk.tokens.size(), room));
    chunk.logits = LogitsWanted::None;
  }

  if (!chunks_.empty()) {
    const std::span<const float> logits = engine_.step(chunks_);
    last_step_sequences_ = chunks_.size();
    size_t row = 0;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      Running& running = running_[chunk_owner_[c]];
      Request& r = *running.request;
      r.n_computed_ += static_cast<int32_t>(chunks_[c].tokens.size());
      if (chunks_[c].logits != LogitsWanted::Last) continue;
      const std::span<const float> row_logits = logits.subspan(row++ * engine_.n_vocab(), engine_.n_vocab());
      try {
        r.accept(row_logits, engine_.n_ctx());
      } catch (const std::exception& e) {
        r.fail(e.what());
      }
      // The prompt is in the cache now: its followers can take it from there.
      for (auto it = running.followers.rbegin(); it != running.followers.rend(); ++it) waiting_.push_front({*it, {}});
      running.followers.clear();
    }
  }
  retire_finished();
  update_counts();
  return true;
}

void Scheduler::cancel_all() {
  end_all([](Request& r) { r.finish(FinishReason::Cancelled); });
}

void Scheduler::fail_all(const std::string& message) {
  end_all([&](Request& r) { r.fail(message); });
}

void Scheduler::end_all(const std::function<void(Request&)>& end) {
  take_inbox();
  for (Running& running : running_) {
    end(*running.request);
    for (auto& f : running.followers) end(*f);
  }
  retire_finished();
  for (Waiting& w : waiting_) {
    end(*w.request);
    for (auto& f : w.followers) end(*f);
  }
  waiting_.clear();
  update_counts();
}

void Scheduler::update_counts() {
  size_t waiting = 0;
  for (const Waiting& w : waiting_) waiting += 1 + w.followers.size();
  for (const Running& r : running_) waiting += r.followers.size();
  {
    const std::lock_guard lock(inbox_mutex_);
    for (const Waiting& w : inbox_) waiting += 1 + w.followers.size();
    n_waiting_.store(waiting, std::memory_order_relaxed);
  }
  n_running_.store(running_.size(), std::memory_order_relaxed);
}

}  // namespace tessera::engine
