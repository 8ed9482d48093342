// The OpenAI API's request and response shapes, as pure functions: a request body in, a validated request out (or
// an ApiError naming the field), and the JSON documents and stream chunks that OpenAI's clients expect. No I/O
// here, so the parser can be fuzzed and every shape tested without a server.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/request.h"
#include "engine/sampler.h"

namespace tessera::server {

// An error reply in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error",
           std::string code = {});
  int status() const { return status_; }
  nlohmann::json body() const;

 private:
  int status_;
  std::string param_;
  std::string type_;
  std::string code_;
};

enum class Endpoint { ChatCompletions, Completions };

struct ChatMessage {
  std::string role;
  std::string content;
};

// A request as the engine will run it, before tokenization.
struct ApiRequest {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string model;
  std::vector<ChatMessage> messages;  // chat
  std::vector<std::string> prompts;   // completions: each prompt gets n choices
  std::optional<int> max_tokens;      // absent: until the end of generation or of the context
  engine::SamplerParams sampling;     // the server's defaults where the request names nothing
  bool seed_given = false;
  int n = 1;
  std::vector<std::string> stop;
  int top_logprobs = -1;              // -1: no log-probabilities
  bool stream = false;
  bool include_usage = false;
  std::optional<bool> context_shift;  // unset: the server's --context-shift
};

inline constexpr int kMaxChoices = 16;
inline constexpr int kMaxTopLogprobs = 20;
inline constexpr int kMaxStopStrings = 4;

// A request body as a JSON object. Throws ApiError (400) for text that is not JSON, numbers JSON allows but a
// double cannot hold (1e999), and JSON that is not an object.
nlohmann::json parse_body_object(std::string_view body);

// Parses and validates a body. `defaults` gives the sampling values the request leaves out; n_vocab bounds
// logit_bias's token ids. Throws ApiError (400) naming the field for invalid JSON, wrong types and values out of
// range. Unknown fields are ignored.
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const engine::SamplerParams& defaults,
                         int32_t n_vocab);

// OpenAI's finish_reason for how a request ended: "stop" (end of generation, a stop string) or "length".
std::string_view finish_reason_text(engine::FinishReason reason);

// One generated token's log-probabilities as the API shows them: token text, bytes, the best alternatives.
struct LogprobText {
  std::string token;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
};
// chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}
nlohmann::json chat_logprobs(const std::vector<LogprobText>& tokens);
// completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}
nlohmann::json completion_logprobs(const std::vector<LogprobText>& tokens, size_t text_offset);

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};
nlohmann::json usage_json(const Usage& usage);

// The fields every response object and chunk starts with.
struct ResponseHeader {
  std::string id;     // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;
  std::string model;
};
// A stream chunk: chat ("chat.completion.chunk", choices[].delta) or completions ("text_completion", choices[].text).
nlohmann::json stream_chunk(Endpoint endpoint, const ResponseHeader& header, int index, const std::string& text,
                            bool first, std::optional<engine::FinishReason> finish, const nlohmann::json& logprobs);
// The chunk that carries the usage, with no choices (stream_options.include_usage).
nlohmann::json usage_chunk(Endpoint endpoint, const ResponseHeader& header, const Usage& usage);

struct Choice {
  std::string text;
  engine::FinishReason finish = engine::FinishReason::None;
  nlohmann::json logprobs;  // null when not asked for
};
// The whole response of a request that does not stream.
nlohmann::json completion_response(Endpoint endpoint, const ResponseHeader& header, const std::vector<Choice>& choices,
                                   const Usage& usage);

}  // namespace tessera::server
