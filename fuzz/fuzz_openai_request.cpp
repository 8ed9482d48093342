// libFuzzer target for the OpenAI request parser (src/server/openai.h): any body must become a validated
// ApiRequest or an ApiError (status 400, an error body that serialises), never crash, leak or throw anything else.
// The first byte picks the endpoint; the rest is the body. A request that parses is then answered through the
// response builders with its own values, as the server would (stream chunks, the whole response, usage).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "server/openai.h"

namespace {

using nlohmann::json;
using namespace tessera;
using namespace tessera::server;

constexpr int32_t kVocab = 512;

void check(bool ok) {
  if (!ok) std::abort();
}

// The server serialises with invalid UTF-8 replaced (server.cpp's dump).
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// What parse_request promises about a request it accepts.
void check_request(const ApiRequest& r, Endpoint endpoint) {
  check(r.endpoint == endpoint);
  if (endpoint == Endpoint::ChatCompletions) {
    check(!r.messages.empty() && r.prompts.empty());
    for (const ChatMessage& m : r.messages) {
      check(m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool");
    }
  } else {
    check(!r.prompts.empty() && r.messages.empty());
  }
  check(!r.max_tokens || *r.max_tokens >= 1);
  check(r.n >= 1 && r.n <= kMaxChoices);
  check(r.stop.size() <= static_cast<size_t>(kMaxStopStrings));
  check(r.top_logprobs >= -1 && r.top_logprobs <= kMaxTopLogprobs);
  check(!r.include_usage || r.stream);
  const engine::SamplerParams& s = r.sampling;
  check(s.temperature >= 0 && s.temperature <= 2);
  check(s.top_p > 0 && s.top_p <= 1);
  check(s.top_k >= 0 && s.top_k <= kVocab);
  check(s.min_p >= 0 && s.min_p <= 1);
  check(s.repeat_penalty > 0 && std::isfinite(s.repeat_penalty));
  for (const auto& [token, bias] : s.logit_bias) check(token >= 0 && token < kVocab && bias >= -100 && bias <= 100);
  s.validate();  // throws std::invalid_argument, which nothing here catches: a crash
}

// The replies to a request that parsed, built from its own strings (which may hold any valid UTF-8).
void answer(const ApiRequest& r) {
  const ResponseHeader header{r.endpoint == Endpoint::ChatCompletions ? "chatcmpl-1" : "cmpl-1", 1767225600, r.model};
  std::vector<std::string> texts = r.prompts;
  for (const ChatMessage& m : r.messages) texts.push_back(m.content);
  texts.insert(texts.end(), r.stop.begin(), r.stop.end());

  std::vector<LogprobText> tokens;
  for (const std::string& t : texts) {
    LogprobText lp{t, -0.5f, {}};
    for (int i = 0; i < r.top_logprobs && i < 3; ++i) lp.top.emplace_back(texts[i % texts.size()], -1.0f - i);
    tokens.push_back(std::move(lp));
  }
  const json logprobs = r.top_logprobs < 0 ? json(nullptr)
                        : r.endpoint == Endpoint::ChatCompletions ? chat_logprobs(tokens)
                                                                   : completion_logprobs(tokens, 0);

  // Token counts as the server could report them: bounded by the input, never near int overflow.
  const Usage usage{static_cast<int>(texts.size()), r.max_tokens ? std::min(*r.max_tokens, 1 << 20) : 16,
                    static_cast<int>(texts.size() / 2)};
  const json u = usage_json(usage);
  check(u["total_tokens"].get<int64_t>() == usage.prompt_tokens + usage.completion_tokens);

  const engine::FinishReason reasons[] = {engine::FinishReason::EndOfGeneration, engine::FinishReason::MaxTokens,
                                          engine::FinishReason::ContextFull, engine::FinishReason::StopString};
  std::vector<Choice> choices;
  for (int i = 0; i < r.n; ++i) {
    const std::string& text = texts[static_cast<size_t>(i) % texts.size()];
    const engine::FinishReason finish = reasons[i % 4];
    const json first = stream_chunk(r.endpoint, header, i, text, true, std::nullopt, logprobs);
    const json last = stream_chunk(r.endpoint, header, i, text, false, finish, json(nullptr));
    check(first["choices"].size() == 1 && last["choices"][0]["finish_reason"] == finish_reason_text(finish));
    if (r.endpoint == Endpoint::ChatCompletions) {
      check(first["object"] == "chat.completion.chunk" && first["choices"][0]["delta"]["role"] == "assistant");
      check(!last["choices"][0]["delta"].contains("role"));
    } else {
      check(first["object"] == "text_completion" && first["choices"][0]["text"] == text);
    }
    dump(first);
    dump(last);
    choices.push_back({text, finish, logprobs});
  }
  if (r.include_usage) dump(usage_chunk(r.endpoint, header, usage));
  const json whole = completion_response(r.endpoint, header, choices, usage);
  check(whole["choices"].size() == static_cast<size_t>(r.n) && whole["usage"] == u);
  // Strings that came out of valid JSON are valid UTF-8: the strict serialiser must take the response too.
  const std::string strict = whole.dump();
  check(json::parse(strict) == whole);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Endpoint endpoint = data[0] & 1 ? Endpoint::Completions : Endpoint::ChatCompletions;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);

  // The body alone: an object, or an ApiError.
  bool object = false;
  try {
    object = parse_body_object(body).is_object();
    check(object);
  } catch (const ApiError& e) {
    check(e.status() == 400);
  }

  ApiRequest request;
  try {
    request = parse_request(endpoint, body, engine::SamplerParams{}, kVocab);
  } catch (const ApiError& e) {
    // Refused: with 400 and a body the server can send. Anything but ApiError escapes this function and crashes.
    check(e.status() == 400);
    const json error = e.body();
    check(error["error"]["type"] == "invalid_request_error" && error["error"]["message"].is_string());
    // A body that is a JSON object is refused for one of its fields, and the error names it.
    check(!object || error["error"]["param"].is_string());
    dump(error);
    return 0;
  }
  check_request(request, endpoint);
  answer(request);
  return 0;
}
