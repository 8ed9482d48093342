#include "engine/request.h"

#include <algorithm>
#include <stdexcept>

namespace tessera::engine {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Where the longest tail of `text` that is a proper start of one of `stops` begins (text.size() if none).
size_t stop_prefix_start(std::string_view text, const std::vector<std::string>& stops) {
  for (size_t i = 0; i < text.size(); ++i) {
    const std::string_view tail = text.substr(i);
    for (const std::string& s : stops) {
      if (s.size() > tail.size() && std::string_view(s).substr(0, tail.size()) == tail) return i;
    }
  }
  return text.size();
}

}  // namespace

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::None: return "none";
    case FinishReason::EndOfGeneration: return "eos";
    case FinishReason::MaxTokens: return "length";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::StopString: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "unknown";
}

Request::Request(RequestOptions options, tokenizer::Tokenizer tokenizer, OnText on_text, OnFinish on_finish)
    : options_(std::move(options)),
      tokenizer_(std::move(tokenizer)),
      decoder_(tokenizer_),
      sampler_(options_.sampling),
      on_text_(std::move(on_text)),
      on_finish_(std::move(on_finish)),
      tokens_(options_.prompt),
      added_at_(Clock::now()) {
  if (options_.prompt.empty()) throw std::invalid_argument("the prompt is empty");
  if (options_.max_tokens < 0) throw std::invalid_argument("max_tokens must not be negative");
  if (options_.keep < 0) throw std::invalid_argument("keep must not be negative");
  std::erase_if(options_.stop, [](const std::string& s) { return s.empty(); });
  timings_.prompt_tokens = static_cast<int32_t>(options_.prompt.size());
}

void Request::accept(std::span<const float> logits, int32_t n_ctx) {
  const Clock::time_point now = Clock::now();
  const int32_t token = sampler_.sample(logits, tokens_);
  if (generated_.empty()) {
    timings_.prompt_seconds = seconds_between(prompt_started_at_, now);
    first_token_at_ = now;
    timings_.first_token_seconds = seconds_between(added_at_, now);
  }
  if (!options_.ignore_eos && tokenizer_.is_end_of_generation(token)) {
    finish(FinishReason::EndOfGeneration);
    return;
  }
  tokens_.push_back(token);
  generated_.push_back(token);
  if (options_.top_logprobs >= 0) pending_logprobs_.push_back(token_logprob(logits, token, options_.top_logprobs));
  release(decoder_.push(token), false);
  if (finished()) return;
  if (options_.max_tokens > 0 && static_cast<int>(generated_.size()) >= options_.max_tokens) {
    finish(FinishReason::MaxTokens);
  } else if (static_cast<int32_t>(tokens_.size()) > n_ctx && !options_.context_shift) {
    finish(FinishReason::ContextFull);  // the last token was sampled; it needs no slot of its own
  }
}

void Request::release(std::string piece, bool final) {
  held_ += piece;
  bool stopped = false;
  size_t keep_from = held_.size();
  if (!options_.stop.empty()) {
    size_t found = std::string::npos;
    for (const std::string& s : options_.stop) found = std::min(found, held_.find(s));
    if (found != std::string::npos) {
      held_.resize(found);
      keep_from = found;
      stopped = true;
    } else if (!final) {
      keep_from = stop_prefix_start(held_, options_.stop);
    }
  }
  const std::string out = held_.substr(0, keep_from);
  held_.erase(0, keep_from);
  text_ += out;
  if (on_text_ && (!out.empty() || !pending_logprobs_.empty())) on_text_(*this, out, pending_logprobs_);
  pending_logprobs_.clear();
  if (stopped) end(FinishReason::StopString);
}

void Request::finish(FinishReason reason) {
  if (finished()) return;
  release(decoder_.flush(), true);  // the last bytes may complete a stop string
  if (!finished()) end(reason);
}

void Request::fail(std::string message) {
  if (finished()) return;
  error_ = std::move(message);
  end(FinishReason::Error);
}

void Request::end(FinishReason reason) {
  finish_ = reason;
  if (!generated_.empty()) timings_.generation_seconds = seconds_between(first_token_at_, Clock::now());
  if (on_finish_) on_finish_(*this);
}

}  // namespace tessera::engine
