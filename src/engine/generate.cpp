#include "engine/generate.h"

#include <chrono>
#include <stdexcept>

namespace tessera::engine {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string_view stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::EndOfGeneration: return "eos";
    case StopReason::MaxTokens: return "length";
    case StopReason::ContextFull: return "context_full";
    case StopReason::Callback: return "stopped";
    case StopReason::Interrupted: return "interrupted";
  }
  return "unknown";
}

GenerateResult generate(Engine& engine, const tokenizer::Tokenizer& tokenizer, const GenerateRequest& request,
                        const std::function<bool(std::string_view)>& on_text) {
  if (request.prompt.empty()) throw std::invalid_argument("the prompt is empty");
  if (request.max_tokens <= 0) throw std::invalid_argument("--max-tokens must be at least 1");
  if (static_cast<int64_t>(request.prompt.size()) >= engine.n_ctx()) {
    throw std::invalid_argument("the prompt has " + std::to_string(request.prompt.size()) +
                                " tokens but the context holds " + std::to_string(engine.n_ctx()) +
                                " (including at least one generated token); raise --ctx-size or shorten it");
  }
  GenerateResult result;
  Sampler sampler(request.sampling);
  tokenizer::StreamingDecoder decoder(tokenizer);
  std::vector<int32_t> history = request.prompt;
  const int32_t seq = engine.new_sequence();
  struct FreeSequence {
    Engine& engine;
    int32_t seq;
    ~FreeSequence() { engine.free_sequence(seq); }
  } free_on_exit{engine, seq};

  const auto start = std::chrono::steady_clock::now();
  std::span<const float> logits = engine.eval(seq, request.prompt);
  result.prompt_seconds = seconds_since(start);
  const auto gen_start = std::chrono::steady_clock::now();

  for (int i = 0; i < request.max_tokens; ++i) {
    if (request.interrupt && request.interrupt->load(std::memory_order_relaxed)) {
      result.stop = StopReason::Interrupted;
      break;
    }
    const int32_t token = sampler.sample(logits, history);
    if (i == 0) result.first_token_seconds = seconds_since(start);
    if (!request.ignore_eos && tokenizer.is_end_of_generation(token)) {
      result.stop = StopReason::EndOfGeneration;
      break;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    const std::string piece = decoder.push(token);
    result.text += piece;
    if (!piece.empty() && !on_text(piece)) {
      result.stop = StopReason::Callback;
      break;
    }
    if (i + 1 == request.max_tokens) {
      result.stop = StopReason::MaxTokens;
      break;
    }
    if (engine.sequence_length(seq) >= engine.n_ctx()) {
      result.stop = StopReason::ContextFull;
      break;
    }
    logits = engine.eval(seq, std::span<const int32_t>(&token, 1));
  }
  const std::string rest = decoder.flush();
  if (!rest.empty()) {
    result.text += rest;
    on_text(rest);
  }
  result.generation_seconds = seconds_since(gen_start);
  return result;
}

}  // namespace tessera::engine
