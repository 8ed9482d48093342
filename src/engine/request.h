// One generation request, from prompt to done: the one object that `run`, `chat` and the server share. Its life:
//
//   waiting ──admitted──► running: prompt chunks (prefill), then one token per step (decode) ──► finished
//      ▲                      │
//      └────preempted─────────┘   (its KV blocks freed; it resumes later with the same output)
//
// A request holds its tokens (prompt, then what it generated), how many of them have keys and values in its
// sequence's cache, its sampler and the text it has released. Prefill and decode are the same thing to it: feed
// the tokens that are not in the cache yet; once none is left, sample the next one. The scheduler (scheduler.h)
// moves requests along, one engine step at a time; everything a caller sees arrives through the callbacks, on the
// scheduler's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace tessera::engine {

struct RequestOptions {
  std::vector<int32_t> prompt;    // token ids, BOS included when wanted
  int max_tokens = 0;             // most tokens to generate; 0: until end of generation or a full context
  SamplerParams sampling;
  bool ignore_eos = false;
  std::vector<std::string> stop;  // generation ends before the first of these; it is never released
  int top_logprobs = -1;          // -1: no log-probabilities; else the chosen token's and this many best
  // When the sequence fills the context: shift it (Engine::shift_context, keeping the first `keep` tokens) and
  // go on, instead of finishing with FinishReason::ContextFull.
  bool context_shift = false;
  int keep = 0;
};

enum class FinishReason { None, EndOfGeneration, MaxTokens, ContextFull, StopString, Cancelled, Error };
// "eos", "length", "context_full", "stop", "cancelled", "error"
std::string_view finish_reason_name(FinishReason reason);

struct RequestTimings {
  int32_t prompt_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // taken from the prefix cache, not evaluated
  double prompt_seconds = 0;         // from the first prompt chunk to the prompt's last
  double first_token_seconds = 0;    // from being added to the first generated token
  double generation_seconds = 0;     // from the first generated token to the end
  int32_t preemptions = 0;
  int32_t context_shifts = 0;
};

class Request {
 public:
  // Text released: the pieces the request generated (complete UTF-8, stop strings held back until they cannot
  // be one), with the tokens generated since the last call (and their log-probabilities when asked for).
  using OnText = std::function<void(const Request&, std::string_view text, std::span<const TokenLogprob> logprobs)>;
  using OnFinish = std::function<void(const Request&)>;

  // Throws std::invalid_argument for an empty prompt, bad sampling values or a negative max_tokens.
  Request(RequestOptions options, tokenizer::Tokenizer tokenizer, OnText on_text = {}, OnFinish on_finish = {});

  // Asks the scheduler to stop this request at its next step; safe from any thread.
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancel_requested() const { return cancelled_.load(std::memory_order_relaxed); }

  bool finished() const { return finish_ != FinishReason::None; }
  FinishReason finish_reason() const { return finish_; }
  const RequestOptions& options() const { return options_; }
  const std::vector<int32_t>& generated() const { return generated_; }
  const std::string& text() const { return text_; }  // everything released so far
  const RequestTimings& timings() const { return timings_; }
  const std::string& error() const { return error_; }  // why it ended with FinishReason::Error
  // The whole sequence: prompt, then generated tokens (an end-of-generation token that ended it excluded), less
  // the tokens context shifts dropped.
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  friend class Scheduler;
  using Clock = std::chrono::steady_clock;

  // Takes a token sampled from `logits` (the row after the last token of the sequence).
  void accept(std::span<const float> logits, int32_t n_ctx);
  // Releases text that can no longer be the start of a stop string; at the end, all of it.
  void release(std::string piece, bool final);
  // Flushes the held text, then ends (unless the text ended it with a stop string).
  void finish(FinishReason reason);
  void end(FinishReason reason);
  void fail(std::string message);

  RequestOptions options_;
  tokenizer::Tokenizer tokenizer_;
  tokenizer::StreamingDecoder decoder_;
  Sampler sampler_;
  OnText on_text_;
  OnFinish on_finish_;
  std::atomic<bool> cancelled_{false};
  FinishReason finish_ = FinishReason::None;

  std::vector<int32_t> tokens_;
  std::vector<int32_t> generated_;
  std::vector<TokenLogprob> pending_logprobs_;  // of tokens whose text is not released yet
  std::string held_;  // text that may be the start of a stop string
  std::string text_;
  RequestTimings timings_;
  std::string error_;
  Clock::time_point added_at_, prompt_started_at_, first_token_at_;
  bool prompt_started_ = false;

  // The scheduler's view.
  int32_t seq_ = -1;         // its sequence while running
  int32_t n_computed_ = 0;   // tokens_ whose keys and values are in the sequence
  uint64_t admitted_order_ = 0;
};

}  // namespace tessera::engine
