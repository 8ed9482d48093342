// The generation loop shared by the CLI, the server and tests: prompt in one batch, then one token per step,
// each new piece of text handed to a callback as soon as it is complete UTF-8.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace tessera::engine {

struct GenerateRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted
  int max_tokens = 128;
  SamplerParams sampling;
  bool ignore_eos = false;
  const std::atomic<bool>* interrupt = nullptr;  // when it becomes true, generation stops with Interrupted
};

enum class StopReason { EndOfGeneration, MaxTokens, ContextFull, Callback, Interrupted };
// "eos", "length", "context_full", "stopped", "interrupted"
std::string_view stop_reason_name(StopReason reason);

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (an end-of-generation token that stopped it is not included)
  std::string text;
  StopReason stop = StopReason::MaxTokens;
  double prompt_seconds = 0;       // prompt evaluation
  double generation_seconds = 0;   // sampling + decoding of the generated tokens after the first
  double first_token_seconds = 0;  // from start to the first generated token
};

// Streams text pieces to `on_text` (return false to stop). Throws if the prompt does not fit the context.
GenerateResult generate(Engine& engine, const tokenizer::Tokenizer& tokenizer, const GenerateRequest& request,
                        const std::function<bool(std::string_view)>& on_text);

}  // namespace tessera::engine
