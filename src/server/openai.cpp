#include "server/openai.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace tessera::server {
namespace {

using nlohmann::json;

[[noreturn]] void invalid(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

// The field, or nullptr when it is absent or null (OpenAI treats both as "not given").
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

// A sampling value, as the float the sampler keeps.
float number(const json& body, const char* name, double low, double high, bool low_open = false) {
  const json& v = *field(body, name);
  if (!v.is_number()) invalid(name, fmt::format("'{}' must be a number", name));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < low || x > high || (low_open && x == low)) {
    invalid(name, fmt::format("'{}' must be in {}{}, {}] (got {})", name, low_open ? "(" : "[", low, high, x));
  }
  float f = static_cast<float>(x);
  // A value inside an open bound that rounds onto it as a float (top_p 1e-50 is 0.0f) takes the next float in:
  // the sampler would refuse 0 with an error naming no field of the request.
  if (low_open && f == static_cast<float>(low)) f = std::nextafter(f, static_cast<float>(high));
  return f;
}

int64_t integer(const json& body, const char* name, int64_t low, int64_t high) {
  const json& v = *field(body, name);
  if (!v.is_number_integer()) invalid(name, fmt::format("'{}' must be an integer", name));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(high)) {
    invalid(name, fmt::format("'{}' must be in [{}, {}]", name, low, high));
  }
  const int64_t x = v.get<int64_t>();
  if (x < low || x > high) invalid(name, fmt::format("'{}' must be in [{}, {}] (got {})", name, low, high, x));
  return x;
}

bool boolean(const json& body, const char* name) {
  const json& v = *field(body, name);
  if (!v.is_boolean()) invalid(name, fmt::format("'{}' must be true or false", name));
  return v.get<bool>();
}

std::string text_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) invalid(param, "'content' must be a string or an array of content parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || !part.contains("type") || part["type"] != "text") {
      invalid(param, "only content parts of type 'text' are supported");
    }
    if (!part.contains("text") || !part["text"].is_string()) invalid(param, "a text content part needs a 'text' string");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* messages = field(body, "messages");
  if (!messages) invalid("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) invalid("messages", "'messages' must be a non-empty array");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) invalid(param, param + " must be an object");
    if (!m.contains("role") || !m["role"].is_string()) invalid(param + ".role", param + " needs a 'role' string");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "developer" && role != "tool") {
      invalid(param + ".role", fmt::format("unknown role '{}' (expected system, developer, user, assistant or tool)", role));
    }
    const json* content = field(m, "content");
    out.push_back({role == "developer" ? "system" : role, content ? text_content(*content, param + ".content") : ""});
  }
  return out;
}

std::vector<std::string> parse_prompts(const json& body) {
  const json* prompt = field(body, "prompt");
  if (!prompt) invalid("prompt", "'prompt' is required");
  if (prompt->is_string()) return {prompt->get<std::string>()};
  if (!prompt->is_array() || prompt->empty()) invalid("prompt", "'prompt' must be a string or a non-empty array of strings");
  std::vector<std::string> out;
  for (const json& p : *prompt) {
    if (!p.is_string()) invalid("prompt", "'prompt' must be a string or a non-empty array of strings");
    out.push_back(p.get<std::string>());
  }
  return out;
}

std::vector<std::string> parse_stop(const json& body) {
  const json* stop = field(body, "stop");
  if (!stop) return {};
  if (stop->is_string()) return {stop->get<std::string>()};
  if (!stop->is_array() || stop->size() > kMaxStopStrings) {
    invalid("stop", fmt::format("'stop' must be a string or an array of at most {} strings", kMaxStopStrings));
  }
  std::vector<std::string> out;
  for (const json& s : *stop) {
    if (!s.is_string()) invalid("stop", "'stop' must be a string or an array of strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& body, int32_t n_vocab) {
  const json* bias = field(body, "logit_bias");
  if (!bias) return {};
  if (!bias->is_object()) invalid("logit_bias", "'logit_bias' must be an object of token ids to numbers");
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, value] : bias->items()) {
    // A token id in decimal digits only: no sign, space or exponent, and not so long it could overflow.
    const bool decimal = !key.empty() && key.size() <= 10 &&
                         std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int64_t id = decimal ? std::stoll(key) : -1;
    if (id < 0 || id >= n_vocab) {
      invalid("logit_bias", fmt::format("logit_bias key '{}' is not a token id in [0, {})", key, n_vocab));
    }
    if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < -100 ||
        value.get<double>() > 100) {
      invalid("logit_bias", fmt::format("logit_bias of token {} must be a number in [-100, 100]", key));
    }
    out.emplace_back(static_cast<int32_t>(id), value.get<float>());
  }
  return out;
}

// A token's bytes as 0..255: char is signed here, and a token can be a lone byte of a multi-byte character.
std::vector<int> utf8_bytes(const std::string& s) {
  std::vector<int> bytes;
  bytes.reserve(s.size());
  for (const char c : s) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

}  // namespace

ApiError::ApiError(int status, std::string message, std::string param, std::string type, std::string code)
    : std::runtime_error(std::move(message)),
      status_(status),
      param_(std::move(param)),
      type_(std::move(type)),
      code_(std::move(code)) {}

json ApiError::body() const {
  json error = {{"message", what()}, {"type", type_}, {"param", nullptr}, {"code", nullptr}};
  if (!param_.empty()) error["param"] = param_;
  if (!code_.empty()) error["code"] = code_;
  return {{"error", error}};
}

json parse_body_object(std::string_view text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {
    // parse_error, or out_of_range for a number beyond a double.
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return body;
}

ApiRequest parse_request(Endpoint endpoint, std::string_view text, const engine::SamplerParams& defaults,
                         int32_t n_vocab) {
  const json body = parse_body_object(text);

  ApiRequest r;
  r.endpoint = endpoint;
  if (const json* model = field(body, "model")) {
    if (!model->is_string()) invalid("model", "'model' must be a string");
    r.model = model->get<std::string>();
  }
  if (endpoint == Endpoint::ChatCompletions) {
    r.messages = parse_messages(body);
  } else {
    r.prompts = parse_prompts(body);
  }
  for (const char* name : {"max_completion_tokens", "max_tokens"}) {
    if (field(body, name)) r.max_tokens = static_cast<int>(integer(body, name, 1, std::numeric_limits<int32_t>::max()));
  }
  r.sampling = defaults;
  if (field(body, "temperature")) r.sampling.temperature = number(body, "temperature", 0, 2);
  if (field(body, "top_p")) r.sampling.top_p = number(body, "top_p", 0, 1, true);
  if (field(body, "top_k")) r.sampling.top_k = static_cast<int>(integer(body, "top_k", 0, n_vocab));
  if (field(body, "min_p")) r.sampling.min_p = number(body, "min_p", 0, 1);
  if (field(body, "presence_penalty")) {
    r.sampling.presence_penalty = number(body, "presence_penalty", -2, 2);
  }
  if (field(body, "frequency_penalty")) {
    r.sampling.frequency_penalty = number(body, "frequency_penalty", -2, 2);
  }
  if (field(body, "repeat_penalty")) {
    r.sampling.repeat_penalty = number(body, "repeat_penalty", 0, 10, true);
  }
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) invalid("seed", "'seed' must be an integer");
    r.sampling.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    r.seed_given = true;
  }
  r.sampling.logit_bias = parse_logit_bias(body, n_vocab);
  if (field(body, "n")) r.n = static_cast<int>(integer(body, "n", 1, kMaxChoices));
  r.stop = parse_stop(body);
  if (endpoint == Endpoint::ChatCompletions) {
    const bool logprobs = field(body, "logprobs") && boolean(body, "logprobs");
    if (field(body, "top_logprobs")) {
      if (!logprobs) invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      r.top_logprobs = static_cast<int>(integer(body, "top_logprobs", 0, kMaxTopLogprobs));
    } else if (logprobs) {
      r.top_logprobs = 0;
    }
  } else if (field(body, "logprobs")) {
    r.top_logprobs = static_cast<int>(integer(body, "logprobs", 0, kMaxTopLogprobs));
  }
  if (field(body, "stream")) r.stream = boolean(body, "stream");
  if (const json* options = field(body, "stream_options")) {
    if (!r.stream) invalid("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (!options->is_object()) invalid("stream_options", "'stream_options' must be an object");
    if (field(*options, "include_usage")) r.include_usage = boolean(*options, "include_usage");
  }
  if (field(body, "context_shift")) r.context_shift = boolean(body, "context_shift");
  try {
    r.sampling.validate();
  } catch (const std::invalid_argument& e) {
    throw ApiError(400, e.what());
  }
  return r;
}

std::string_view finish_reason_text(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::MaxTokens:
    case engine::FinishReason::ContextFull: return "length";
    default: return "stop";
  }
}

json chat_logprobs(const std::vector<LogprobText>& tokens) {
  json content = json::array();
  for (const LogprobText& t : tokens) {
    json top = json::array();
    for (const auto& [text, lp] : t.top) top.push_back({{"token", text}, {"logprob", lp}, {"bytes", utf8_bytes(text)}});
    content.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", utf8_bytes(t.token)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json completion_logprobs(const std::vector<LogprobText>& tokens, size_t text_offset) {
  json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const LogprobText& t : tokens) {
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [text, lp] : t.top) top[text] = lp;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(text_offset);
    text_offset += t.token.size();
  }
  return out;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json stream_chunk(Endpoint endpoint, const ResponseHeader& header, int index, const std::string& text, bool first,
                  std::optional<engine::FinishReason> finish, const json& logprobs) {
  json choice = {{"index", index}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = finish_reason_text(*finish);
  json chunk = {{"id", header.id}, {"created", header.created}, {"model", header.model}};
  if (endpoint == Endpoint::ChatCompletions) {
    chunk["object"] = "chat.completion.chunk";
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (first || !text.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    chunk["object"] = "text_completion";
    choice["text"] = text;
  }
  chunk["choices"] = json::array({choice});
  return chunk;
}

json usage_chunk(Endpoint endpoint, const ResponseHeader& header, const Usage& usage) {
  return {{"id", header.id},
          {"object", endpoint == Endpoint::ChatCompletions ? "chat.completion.chunk" : "text_completion"},
          {"created", header.created},
          {"model", header.model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

json completion_response(Endpoint endpoint, const ResponseHeader& header, const std::vector<Choice>& choices,
                         const Usage& usage) {
  json out = {{"id", header.id}, {"created", header.created}, {"model", header.model}};
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    json choice = {{"index", i}, {"logprobs", c.logprobs}, {"finish_reason", finish_reason_text(c.finish)}};
    if (endpoint == Endpoint::ChatCompletions) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    list.push_back(choice);
  }
  out["object"] = endpoint == Endpoint::ChatCompletions ? "chat.completion" : "text_completion";
  out["choices"] = list;
  out["usage"] = usage_json(usage);
  return out;
}

}  // namespace tessera::server
