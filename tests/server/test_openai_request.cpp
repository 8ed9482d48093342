// The OpenAI request parser and response builders (server/openai.h) without a server, so they run under ASan and
// UBSan: defaults, each field's value, each refusal naming its field, bodies that are not objects or nest deep,
// numbers at the edges of JSON and of float, and the shapes of chunks and responses. The end-to-end behaviour
// through the openai client is tests/server/api.test.mjs's.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "engine/sampler.h"
#include "server/openai.h"

namespace tessera::server {
namespace {

using nlohmann::json;
using engine::FinishReason;

constexpr int32_t kVocab = 512;
const std::string kMessages = R"("messages":[{"role":"user","content":"Hi"}])";

engine::SamplerParams defaults() {
  engine::SamplerParams p;
  p.temperature = 0.5f;
  p.top_k = 7;
  p.top_p = 0.75f;
  p.min_p = 0.25f;
  p.repeat_penalty = 1.5f;
  p.seed = 99;
  return p;
}

ApiRequest chat(const std::string& fields) {
  return parse_request(Endpoint::ChatCompletions, "{" + kMessages + (fields.empty() ? "" : "," + fields) + "}",
                       defaults(), kVocab);
}

ApiRequest completion(const std::string& fields) {
  return parse_request(Endpoint::Completions, "{" + fields + "}", defaults(), kVocab);
}

// The ApiError a body gets: its status and body, or a failure when it parses.
json refusal(Endpoint endpoint, const std::string& body) {
  try {
    parse_request(endpoint, body, defaults(), kVocab);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400) << body;
    const json error = e.body();
    EXPECT_EQ(error["error"]["type"], "invalid_request_error") << body;
    EXPECT_TRUE(error["error"]["message"].is_string()) << body;
    EXPECT_FALSE(error["error"]["message"].get<std::string>().empty()) << body;
    return error["error"];
  }
  ADD_FAILURE() << "accepted: " << body;
  return json();
}

// The param a chat request with these fields is refused for (null when the error names none).
json refused_param(const std::string& fields) {
  return refusal(Endpoint::ChatCompletions, "{" + kMessages + "," + fields + "}")["param"];
}

TEST(OpenAiRequest, DefaultsApplyWhereTheRequestNamesNothing) {
  const ApiRequest r = chat("");
  EXPECT_EQ(r.endpoint, Endpoint::ChatCompletions);
  EXPECT_EQ(r.model, "");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "Hi");
  EXPECT_TRUE(r.prompts.empty());
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.top_p, 0.75f);
  EXPECT_EQ(r.sampling.min_p, 0.25f);
  EXPECT_EQ(r.sampling.repeat_penalty, 1.5f);
  EXPECT_EQ(r.sampling.seed, 99u);
  EXPECT_TRUE(r.sampling.logit_bias.empty());
  EXPECT_FALSE(r.seed_given);
  EXPECT_EQ(r.n, 1);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.top_logprobs, -1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.context_shift.has_value());
}

TEST(OpenAiRequest, NullIsTheSameAsAbsent) {
  const ApiRequest r = chat(R"("model":null,"max_tokens":null,"temperature":null,"top_p":null,"seed":null,"n":null,)"
                            R"("stop":null,"logit_bias":null,"logprobs":null,"top_logprobs":null,"stream":null,)"
                            R"("stream_options":null,"context_shift":null)");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FALSE(r.seed_given);
  EXPECT_EQ(r.top_logprobs, -1);
  EXPECT_FALSE(r.context_shift.has_value());
}

TEST(OpenAiRequest, EveryChatFieldIsParsedToItsValue) {
  const ApiRequest r = parse_request(Endpoint::ChatCompletions, R"({
      "model": "stories260K",
      "messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No lists."},
                   {"role": "user", "content": [{"type": "text", "text": "Once"}, {"type": "text", "text": " upon"}]},
                   {"role": "assistant", "content": null}, {"role": "tool", "content": "42"}],
      "max_completion_tokens": 8, "temperature": 0, "top_p": 0.5, "top_k": 512, "min_p": 0, "presence_penalty": -2,
      "frequency_penalty": 1.5, "repeat_penalty": 10, "seed": 18446744073709551615, "n": 16,
      "stop": ["\n", "The end", "", "x"], "logit_bias": {"0": -100, "13": 5.5, "511": 100, "0007": 1},
      "logprobs": true, "top_logprobs": 20, "stream": true, "stream_options": {"include_usage": true},
      "context_shift": false, "user": "ignored", "unknown": {"nested": [1, 2]}})",
                                     defaults(), kVocab);
  EXPECT_EQ(r.model, "stories260K");
  const std::vector<std::pair<std::string, std::string>> messages = {
      {"system", "Be brief."}, {"system", "No lists."}, {"user", "Once upon"}, {"assistant", ""}, {"tool", "42"}};
  ASSERT_EQ(r.messages.size(), messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    EXPECT_EQ(r.messages[i].role, messages[i].first) << i;
    EXPECT_EQ(r.messages[i].content, messages[i].second) << i;
  }
  EXPECT_EQ(r.max_tokens, 8);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 512);
  EXPECT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_EQ(r.sampling.presence_penalty, -2.0f);
  EXPECT_EQ(r.sampling.frequency_penalty, 1.5f);
  EXPECT_EQ(r.sampling.repeat_penalty, 10.0f);
  EXPECT_EQ(r.sampling.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.n, 16);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "The end", "", "x"}));
  // In the keys' order as strings ("0" < "0007" < "13"): nlohmann keeps an object's keys sorted.
  EXPECT_EQ(r.sampling.logit_bias,
            (std::vector<std::pair<int32_t, float>>{{0, -100.0f}, {7, 1.0f}, {13, 5.5f}, {511, 100.0f}}));
  EXPECT_EQ(r.top_logprobs, 20);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.context_shift, false);
}

TEST(OpenAiRequest, MaxTokensAndMaxCompletionTokens) {
  EXPECT_EQ(chat(R"("max_tokens":5)").max_tokens, 5);
  EXPECT_EQ(chat(R"("max_completion_tokens":6)").max_tokens, 6);
  // Both given: max_tokens, the older name, is read last.
  EXPECT_EQ(chat(R"("max_completion_tokens":6,"max_tokens":5)").max_tokens, 5);
  EXPECT_EQ(chat(R"("max_tokens":2147483647)").max_tokens, std::numeric_limits<int32_t>::max());
  EXPECT_EQ(refused_param(R"("max_tokens":2147483648)"), "max_tokens");
  EXPECT_EQ(refused_param(R"("max_tokens":18446744073709551615)"), "max_tokens");
  EXPECT_EQ(refused_param(R"("max_completion_tokens":0)"), "max_completion_tokens");
  EXPECT_EQ(refused_param(R"("max_tokens":-9223372036854775808)"), "max_tokens");
  EXPECT_EQ(refused_param(R"("max_tokens":5.0)"), "max_tokens");
  EXPECT_EQ(refused_param(R"("max_tokens":"5")"), "max_tokens");
}

TEST(OpenAiRequest, SeedTakesEveryIntegerJsonHolds) {
  const ApiRequest negative = chat(R"("seed":-1)");
  EXPECT_TRUE(negative.seed_given);
  EXPECT_EQ(negative.sampling.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(chat(R"("seed":0)").sampling.seed, 0u);
  EXPECT_EQ(chat(R"("seed":-9223372036854775808)").sampling.seed, uint64_t{1} << 63);
  EXPECT_EQ(refused_param(R"("seed":1.5)"), "seed");
  EXPECT_EQ(refused_param(R"("seed":"1")"), "seed");
  // Beyond 64 bits JSON's integer becomes a double: not an integer any more.
  EXPECT_EQ(refused_param(R"("seed":18446744073709551616)"), "seed");
}

TEST(OpenAiRequest, CompletionsPromptAsStringOrArray) {
  const ApiRequest one = completion(R"("prompt":"Once upon a time","logprobs":3)");
  EXPECT_EQ(one.endpoint, Endpoint::Completions);
  EXPECT_EQ(one.prompts, std::vector<std::string>{"Once upon a time"});
  EXPECT_TRUE(one.messages.empty());
  EXPECT_EQ(one.top_logprobs, 3);
  const ApiRequest many = completion(R"("prompt":["a","",  "c"],"n":2,"logprobs":0)");
  EXPECT_EQ(many.prompts, (std::vector<std::string>{"a", "", "c"}));
  EXPECT_EQ(many.n, 2);
  EXPECT_EQ(many.top_logprobs, 0);
  EXPECT_EQ(completion(R"("prompt":"")").prompts, std::vector<std::string>{""});
  // Completions' logprobs is a count; chat's is a flag with top_logprobs beside it.
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":"a","logprobs":true})")["param"], "logprobs");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":"a","logprobs":21})")["param"], "logprobs");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":"a","logprobs":-1})")["param"], "logprobs");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":[]})")["param"], "prompt");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":[["a"]]})")["param"], "prompt");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"prompt":[1,2,3]})")["param"], "prompt");
  EXPECT_EQ(refusal(Endpoint::Completions, R"({"messages":[{"role":"user","content":"x"}]})")["param"], "prompt");
  // Each endpoint reads only its own input field.
  EXPECT_EQ(refusal(Endpoint::ChatCompletions, R"({"prompt":"a"})")["param"], "messages");
}

TEST(OpenAiRequest, ChatLogprobs) {
  EXPECT_EQ(chat(R"("logprobs":true)").top_logprobs, 0);
  EXPECT_EQ(chat(R"("logprobs":false)").top_logprobs, -1);
  EXPECT_EQ(chat(R"("logprobs":true,"top_logprobs":0)").top_logprobs, 0);
  EXPECT_EQ(refused_param(R"("logprobs":true,"top_logprobs":21)"), "top_logprobs");
  EXPECT_EQ(refused_param(R"("logprobs":true,"top_logprobs":-1)"), "top_logprobs");
  EXPECT_EQ(refused_param(R"("logprobs":false,"top_logprobs":2)"), "top_logprobs");
  EXPECT_EQ(refused_param(R"("top_logprobs":2)"), "top_logprobs");
  EXPECT_EQ(refused_param(R"("logprobs":1)"), "logprobs");
}

TEST(OpenAiRequest, MessagesAndContentParts) {
  EXPECT_EQ(chat("").messages.size(), 1u);
  const ApiRequest parts = parse_request(
      Endpoint::ChatCompletions, R"({"messages":[{"role":"user","content":[]},{"role":"user","content":"\u00e9\u0000x"}]})",
      defaults(), kVocab);
  EXPECT_EQ(parts.messages[0].content, "");
  EXPECT_EQ(parts.messages[1].content, std::string("\xc3\xa9\0x", 4));
  const auto param = [](const std::string& body) { return refusal(Endpoint::ChatCompletions, body)["param"]; };
  EXPECT_EQ(param(R"({})"), "messages");
  EXPECT_EQ(param(R"({"messages":[]})"), "messages");
  EXPECT_EQ(param(R"({"messages":{"role":"user"}})"), "messages");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":"a"},"b"]})"), "messages[1]");
  EXPECT_EQ(param(R"({"messages":[{"content":"a"}]})"), "messages[0].role");
  EXPECT_EQ(param(R"({"messages":[{"role":5}]})"), "messages[0].role");
  EXPECT_EQ(param(R"({"messages":[{"role":"robot","content":"a"}]})"), "messages[0].role");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":5}]})"), "messages[0].content");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})"),
            "messages[0].content");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})"), "messages[0].content");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":[{"type":"text","text":1}]}]})"), "messages[0].content");
  EXPECT_EQ(param(R"({"messages":[{"role":"user","content":["text"]}]})"), "messages[0].content");
}

TEST(OpenAiRequest, EachInvalidFieldIsA400NamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("model":5)", "model"},
      {R"("n":0)", "n"},
      {R"("n":17)", "n"},
      {R"("n":-1)", "n"},
      {R"("n":true)", "n"},
      {R"("n":1.0)", "n"},
      {R"("temperature":-0.01)", "temperature"},
      {R"("temperature":2.01)", "temperature"},
      {R"("temperature":"1")", "temperature"},
      {R"("temperature":[1])", "temperature"},
      {R"("top_p":0)", "top_p"},
      {R"("top_p":-0.0)", "top_p"},
      {R"("top_p":1.0000001)", "top_p"},
      {R"("top_k":-1)", "top_k"},
      {R"("top_k":513)", "top_k"},
      {R"("min_p":-0.1)", "min_p"},
      {R"("presence_penalty":2.5)", "presence_penalty"},
      {R"("frequency_penalty":-2.5)", "frequency_penalty"},
      {R"("repeat_penalty":0)", "repeat_penalty"},
      {R"("repeat_penalty":10.5)", "repeat_penalty"},
      {R"("stop":["a","b","c","d","e"])", "stop"},
      {R"("stop":5)", "stop"},
      {R"("stop":["a",null])", "stop"},
      {R"("stop":{"a":1})", "stop"},
      {R"("logit_bias":[])", "logit_bias"},
      {R"("logit_bias":{"x":1})", "logit_bias"},
      {R"("logit_bias":{"":1})", "logit_bias"},
      {R"("logit_bias":{"-1":1})", "logit_bias"},
      {R"("logit_bias":{"+1":1})", "logit_bias"},
      {R"("logit_bias":{" 1":1})", "logit_bias"},
      {R"("logit_bias":{"1.0":1})", "logit_bias"},
      {R"("logit_bias":{"1e2":1})", "logit_bias"},
      {R"("logit_bias":{"512":1})", "logit_bias"},
      {R"("logit_bias":{"9999999999":1})", "logit_bias"},
      {R"("logit_bias":{"99999999999999999999":1})", "logit_bias"},
      {R"("logit_bias":{"1":"5"})", "logit_bias"},
      {R"("logit_bias":{"1":null})", "logit_bias"},
      {R"("logit_bias":{"1":100.5})", "logit_bias"},
      {R"("logit_bias":{"1":-101})", "logit_bias"},
      {R"("stream":"yes")", "stream"},
      {R"("stream":1)", "stream"},
      {R"("stream_options":{"include_usage":true})", "stream_options"},
      {R"("stream":true,"stream_options":[])", "stream_options"},
      {R"("stream":true,"stream_options":{"include_usage":1})", "include_usage"},
      {R"("context_shift":"true")", "context_shift"},
      {R"("context_shift":0)", "context_shift"},
  };
  for (const auto& [fields, param] : cases) EXPECT_EQ(refused_param(fields), param) << fields;
}

TEST(OpenAiRequest, NumbersBeyondADoubleAreRefusedAsInvalidJson) {
  for (const char* number : {"1e999", "-1e999", "1e309"}) {
    const json error = refusal(Endpoint::ChatCompletions, "{" + kMessages + R"(,"temperature":)" + number + "}");
    EXPECT_TRUE(error["param"].is_null()) << number;
    EXPECT_NE(error["message"].get<std::string>().find("not valid JSON"), std::string::npos) << number;
  }
}

// Values inside an open range that a float cannot tell from its bound (top_p 1e-50 is 0.0f) used to pass the
// request's check and then fail the sampler's, with the command line's flag name and no param; the fuzzer found it.
TEST(OpenAiRequest, TinyValuesInsideOpenRangesStayInside) {
  const ApiRequest r = chat(R"("top_p":1e-50,"repeat_penalty":5e-324,"temperature":1e-300,"min_p":1e-300)");
  EXPECT_GT(r.sampling.top_p, 0.0f);
  EXPECT_GT(r.sampling.repeat_penalty, 0.0f);
  EXPECT_EQ(r.sampling.temperature, 0.0f);  // a closed bound: greedy
  EXPECT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_NO_THROW(r.sampling.validate());
  EXPECT_EQ(chat(R"("top_p":1)").sampling.top_p, 1.0f);
}

TEST(OpenAiRequest, BodiesThatAreNotObjects) {
  const std::vector<std::string> bodies = {"",     " ",       "{",     "null",  "[]",   "[{}]", "\"text\"", "5", "true",
                                          "{\"a\":1}{\"b\":2}", "{\"a\":1,}", "{'a':1}", std::string("\0", 1),
                                          "\xff\xfe{}", "{\"a\":\"\xff\"}"};
  for (const std::string& body : bodies) {
    for (const Endpoint endpoint : {Endpoint::ChatCompletions, Endpoint::Completions}) {
      const json error = refusal(endpoint, body);
      EXPECT_TRUE(error["param"].is_null()) << body;
      // The server replaces invalid UTF-8 (of the body, quoted in the message) when it sends the error.
      EXPECT_NO_THROW(json({{"error", error}}).dump(-1, ' ', false, json::error_handler_t::replace)) << body;
    }
    EXPECT_THROW(parse_body_object(body), ApiError) << body;
  }
  EXPECT_EQ(parse_body_object(" {\"a\": [1]} \n"), json({{"a", {1}}}));
}

TEST(OpenAiRequest, DeepNestingIsParsedOrRefusedWithoutOverflowingTheStack) {
  constexpr int kDepth = 100000;
  const std::string arrays = std::string(kDepth, '[') + std::string(kDepth, ']');
  EXPECT_TRUE(refusal(Endpoint::ChatCompletions, arrays)["param"].is_null());
  // Deep in an ignored field of an object: accepted, and destroyed again without recursion blowing the stack.
  const ApiRequest r = chat(R"("unknown":)" + arrays);
  EXPECT_EQ(r.messages.size(), 1u);
  // Deep where a value is expected: refused for that field.
  EXPECT_EQ(refused_param(R"("stop":)" + arrays), "stop");
  std::string objects;
  for (int i = 0; i < kDepth; ++i) objects += R"({"a":)";
  objects += "1" + std::string(kDepth, '}');
  EXPECT_EQ(refused_param(R"("logit_bias":)" + objects), "logit_bias");
  // Unbalanced: invalid JSON.
  EXPECT_TRUE(refusal(Endpoint::ChatCompletions, std::string(kDepth, '[')).is_object());
}

TEST(OpenAiRequest, ApiErrorBodyHasOpenAisShape) {
  const ApiError e(429, "busy", {}, "server_error", "rate_limited");
  EXPECT_EQ(e.status(), 429);
  EXPECT_EQ(e.body(), json::parse(R"({"error":{"message":"busy","type":"server_error","param":null,)"
                                  R"("code":"rate_limited"}})"));
  EXPECT_EQ(ApiError(400, "bad", "n").body(),
            json::parse(R"({"error":{"message":"bad","type":"invalid_request_error","param":"n","code":null}})"));
}

const ResponseHeader kHeader{"chatcmpl-7", 1767225600, "stories260K"};

TEST(OpenAiResponse, ChatStreamChunks) {
  const json first = stream_chunk(Endpoint::ChatCompletions, kHeader, 2, "", true, std::nullopt, nullptr);
  EXPECT_EQ(first, json::parse(R"({"id":"chatcmpl-7","object":"chat.completion.chunk","created":1767225600,)"
                               R"("model":"stories260K","choices":[{"index":2,"delta":{"role":"assistant","content":""},)"
                               R"("logprobs":null,"finish_reason":null}]})"));
  const json middle = stream_chunk(Endpoint::ChatCompletions, kHeader, 0, "Once", false, std::nullopt, nullptr);
  EXPECT_EQ(middle["choices"][0]["delta"], json({{"content", "Once"}}));
  // The last chunk: no role, no content when there is no text, and the finish reason.
  const json last = stream_chunk(Endpoint::ChatCompletions, kHeader, 0, "", false, FinishReason::MaxTokens, nullptr);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const json lp = chat_logprobs({{"a", -0.5f, {{"a", -0.5f}, {"b", -1.5f}}}});
  EXPECT_EQ(stream_chunk(Endpoint::ChatCompletions, kHeader, 0, "a", false, std::nullopt, lp)["choices"][0]["logprobs"], lp);
}

TEST(OpenAiResponse, CompletionStreamChunks) {
  const json chunk = stream_chunk(Endpoint::Completions, {"cmpl-3", 5, "m"}, 1, "time", true, FinishReason::StopString,
                                  nullptr);
  EXPECT_EQ(chunk, json::parse(R"({"id":"cmpl-3","object":"text_completion","created":5,"model":"m",)"
                               R"("choices":[{"index":1,"text":"time","logprobs":null,"finish_reason":"stop"}]})"));
}

TEST(OpenAiResponse, FinishReasons) {
  EXPECT_EQ(finish_reason_text(FinishReason::EndOfGeneration), "stop");
  EXPECT_EQ(finish_reason_text(FinishReason::StopString), "stop");
  EXPECT_EQ(finish_reason_text(FinishReason::MaxTokens), "length");
  EXPECT_EQ(finish_reason_text(FinishReason::ContextFull), "length");
}

TEST(OpenAiResponse, UsageAndTheUsageChunk) {
  const Usage usage{12, 30, 8};
  const json expected = json::parse(
      R"({"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":8}})");
  EXPECT_EQ(usage_json(usage), expected);
  const json chunk = usage_chunk(Endpoint::ChatCompletions, kHeader, usage);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"], json::array());
  EXPECT_EQ(chunk["usage"], expected);
  EXPECT_EQ(usage_chunk(Endpoint::Completions, kHeader, usage)["object"], "text_completion");
}

TEST(OpenAiResponse, WholeResponses) {
  const std::vector<Choice> choices = {{"Once upon", FinishReason::MaxTokens, nullptr},
                                       {"", FinishReason::EndOfGeneration, json::parse(R"({"content":[]})")}};
  const json chat = completion_response(Endpoint::ChatCompletions, kHeader, choices, {3, 2, 0});
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["id"], "chatcmpl-7");
  ASSERT_EQ(chat["choices"].size(), 2u);
  EXPECT_EQ(chat["choices"][0], json::parse(R"({"index":0,"message":{"role":"assistant","content":"Once upon"},)"
                                            R"("logprobs":null,"finish_reason":"length"})"));
  EXPECT_EQ(chat["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(chat["choices"][1]["logprobs"], json::parse(R"({"content":[]})"));
  EXPECT_EQ(chat["usage"]["total_tokens"], 5);
  const json text = completion_response(Endpoint::Completions, kHeader, choices, {3, 2, 0});
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0], json::parse(R"({"index":0,"text":"Once upon","logprobs":null,"finish_reason":"length"})"));
  EXPECT_FALSE(text["choices"][0].contains("message"));
}

TEST(OpenAiResponse, LogprobShapes) {
  // A lone byte of a multi-byte character shows as its byte value, 0 to 255.
  const std::vector<LogprobText> tokens = {{"\xe2", -0.25f, {{"\xe2", -0.25f}, {"a", -2.0f}}}, {"bc", -1.0f, {}}};
  const json chat = chat_logprobs(tokens);
  ASSERT_EQ(chat["content"].size(), 2u);
  EXPECT_EQ(chat["content"][0]["bytes"], json::array({226}));
  EXPECT_EQ(chat["content"][0]["logprob"], -0.25);
  EXPECT_EQ(chat["content"][0]["top_logprobs"][1], json::parse(R"({"token":"a","logprob":-2.0,"bytes":[97]})"));
  EXPECT_EQ(chat["content"][1]["top_logprobs"], json::array());
  const json text = completion_logprobs(tokens, 10);
  EXPECT_EQ(text["token_logprobs"], json::parse("[-0.25,-1.0]"));
  EXPECT_EQ(text["text_offset"], json::parse("[10,11]"));
  EXPECT_EQ(text["top_logprobs"][0]["a"], -2.0);
  EXPECT_EQ(text["top_logprobs"][1], json::object());
}

}  // namespace
}  // namespace tessera::server
