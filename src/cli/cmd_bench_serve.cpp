// `tessera bench-serve`: a load generator for an OpenAI-compatible server (`tessera serve`, or any server with
// llama.cpp's /tokenize and /detokenize), in the manner of vLLM's benchmark_serving. For each concurrency level it
// keeps that many streamed requests in flight until --requests have run, and reports request and token throughput,
// time to first token, inter-token latency and end-to-end latency.
//
// Honest lengths: prompts are random token ids turned into text by the server's own /detokenize, then tokenized
// back with /tokenize and trimmed or topped up until the text is exactly the wanted number of tokens; the tokens
// the server adds around it (BOS, the chat template) are measured by a first request and subtracted. The output
// length is forced with max_tokens and logit_bias -100 on the end-of-generation tokens, and every chunk asks for
// log-probabilities, whose entries count the tokens it carries. The report shows the prompt and output tokens the
// server counted (usage), so a length that came out wrong is visible rather than assumed.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "cli/stdout_writer.h"

namespace tessera::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kMaxConcurrency = 1024;
constexpr int kPromptAttempts = 32;  // detokenize/tokenize rounds before a prompt length is given up on
constexpr float kBanBias = -100;     // the lowest logit_bias OpenAI's API allows
constexpr int kVocabSearchLimit = 1 << 24;
constexpr size_t kMaxErrorBody = 64 * 1024;  // of an error reply, kept for its message
// Texts of end-of-generation tokens in common vocabularies: those that are one special token in the served
// vocabulary are banned so that requests run to max_tokens.
constexpr const char* kEndTexts[] = {"</s>",       "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
                                     "<|im_end|>", "<|end|>",       "<end_of_turn>",   "<eos>",      "<EOT>"};

struct BenchServeArgs {
  std::string url = "http://127.0.0.1:8080";
  std::string api_key;
  std::string model;  // empty: the first of /v1/models
  std::string endpoint = "completions";
  std::vector<int> concurrency = {1};
  std::vector<int> requests = {64};  // one value for every level, or one per level
  int input_len = 256;
  int output_len = 128;
  double shared_prefix = 0;
  double temperature = 0;
  std::vector<int> end_tokens;   // empty: found through /tokenize
  std::optional<uint64_t> seed;  // absent: a random one, so that a rerun does not find its prompts cached
  int timeout_s = 300;
  std::string output = "md";
};

// ---- HTTP

// The scheme://host:port of a server's root URL, which is what httplib::Client takes.
std::string server_origin(const std::string& url) {
  static const std::regex pattern(R"(^(https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?)/?$)");
  std::smatch m;
  if (!std::regex_match(url, m, pattern)) {
    throw UsageError(fmt::format("--url must be http://HOST[:PORT] or https://HOST[:PORT], the server's root "
                                 "(got '{}')",
                                 url));
  }
  return m[1].str();
}

// Streams keep their connection from one request to the next, as clients of a server do. The preparing calls
// open one each: a server that leaves Nagle's algorithm on holds a reply's body on a kept connection until the
// client's delayed acknowledgement of its head, some 40 ms.
std::unique_ptr<httplib::Client> make_client(const std::string& origin, int timeout_s, bool keep_alive) {
  auto client = std::make_unique<httplib::Client>(origin);
  client->set_connection_timeout(std::chrono::seconds(5));
  client->set_read_timeout(std::chrono::seconds(timeout_s));
  client->set_write_timeout(std::chrono::seconds(timeout_s));
  client->set_keep_alive(keep_alive);
  client->set_tcp_nodelay(true);  // a request's head and body go out at once
  return client;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// What went wrong with an HTTP exchange, in words (httplib's own names are single words like "Read").
std::string describe(httplib::Error e, int timeout_s) {
  switch (e) {
    case httplib::Error::Connection: return "could not connect (refused, or no such host)";
    case httplib::Error::ConnectionTimeout: return "no connection within 5 s";
    case httplib::Error::Read:
      return fmt::format("the connection closed, or stayed silent for {} s (--timeout)", timeout_s);
    case httplib::Error::Write: return "could not send the request";
    case httplib::Error::SSLConnection:
    case httplib::Error::SSLServerVerification: return "the TLS connection failed";
    default: return httplib::to_string(e);
  }
}

// The message of an OpenAI-shaped error body, or the start of whatever the body is.
std::string error_message(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].contains("message") &&
      j["error"]["message"].is_string()) {
    return j["error"]["message"].get<std::string>();
  }
  return body.substr(0, 200);
}

// Plain JSON calls to the server while preparing: any failure ends the command with one line.
class ServerCalls {
 public:
  ServerCalls(const BenchServeArgs& args, const std::string& origin)
      : url_(args.url), timeout_s_(args.timeout_s), client_(make_client(origin, args.timeout_s, false)) {
    if (!args.api_key.empty()) headers_.emplace("Authorization", "Bearer " + args.api_key);
  }

  json get(const std::string& path) { return check("GET", path, client_->Get(path, headers_)); }
  json post(const std::string& path, const json& body) {
    return check("POST", path, client_->Post(path, headers_, dump(body), "application/json"));
  }
  // The status alone, for probes where a 4xx is an answer.
  int post_status(const std::string& path, const json& body) {
    const httplib::Result r = client_->Post(path, headers_, dump(body), "application/json");
    if (!r) throw unreachable(r.error());
    return r->status;
  }

  std::vector<int32_t> tokenize(const std::string& text, bool add_special, bool parse_special) {
    return post("/tokenize", {{"content", text}, {"add_special", add_special}, {"parse_special", parse_special}})
        .at("tokens")
        .get<std::vector<int32_t>>();
  }
  std::string detokenize(const std::vector<int32_t>& tokens) {
    return post("/detokenize", {{"tokens", tokens}}).at("content").get<std::string>();
  }

 private:
  std::runtime_error unreachable(httplib::Error e) const {
    return std::runtime_error(fmt::format("cannot reach the server at {}: {}", url_, describe(e, timeout_s_)));
  }
  json check(const char* method, const std::string& path, const httplib::Result& r) {
    if (!r) throw unreachable(r.error());
    if (r->status != 200) {
      throw std::runtime_error(
          fmt::format("{} {}{} answered HTTP {}: {}", method, url_, path, r->status, error_message(r->body)));
    }
    json j = json::parse(r->body, nullptr, false);
    if (j.is_discarded()) throw std::runtime_error(fmt::format("{} {}{} did not answer JSON", method, url_, path));
    return j;
  }

  std::string url_;
  int timeout_s_;
  std::unique_ptr<httplib::Client> client_;
  httplib::Headers headers_;
};

// ---- One streamed request

struct RequestResult {
  bool ok = false;
  std::string error;
  double ttft = 0;          // seconds from sending to the first chunk that carries a token
  double e2e = 0;           // seconds from sending to the end of the stream
  std::vector<double> itl;  // seconds, one per token after those of the first chunk
  int prompt_tokens = 0;    // as the server's usage counts them
  int cached_tokens = 0;
  int output_tokens = 0;    // usage's completion_tokens (the streamed count where usage is missing)
  int streamed_tokens = 0;  // tokens counted in the chunks
};

// Reads server-sent events as they arrive and times the chunks that carry tokens.
class StreamReader {
 public:
  StreamReader(bool chat, Clock::time_point sent) : chat_(chat), sent_(sent), last_(sent) {}

  void feed(std::string_view data, Clock::time_point now) {
    for (char c : data)
      if (c != '\r') buffer_ += c;
    size_t end;
    while (!failed() && (end = buffer_.find("\n\n")) != std::string::npos) {
      const std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      size_t start = 0;
      while (start < event.size()) {
        size_t stop = event.find('\n', start);
        if (stop == std::string::npos) stop = event.size();
        const std::string_view line = std::string_view(event).substr(start, stop - start);
        if (line.starts_with("data:")) data_line(line.substr(line.starts_with("data: ") ? 6 : 5), now);
        start = stop + 1;
      }
    }
  }

  bool done() const { return done_; }
  bool failed() const { return !result_.error.empty(); }
  bool usage_seen() const { return usage_seen_; }
  RequestResult& result() { return result_; }

 private:
  void data_line(std::string_view payload, Clock::time_point now) {
    if (done_) return;
    if (payload == "[DONE]") {
      done_ = true;
      return;
    }
    const json chunk = json::parse(payload, nullptr, false);
    if (!chunk.is_object()) {
      result_.error = "the stream held an event that is not a JSON object";
      return;
    }
    if (chunk.contains("error")) {
      result_.error = "error event in the stream: " + error_message(std::string(payload));
      return;
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      const json& u = chunk["usage"];
      result_.prompt_tokens = u.value("prompt_tokens", 0);
      result_.output_tokens = u.value("completion_tokens", 0);
      if (u.contains("prompt_tokens_details") && u["prompt_tokens_details"].is_object()) {
        result_.cached_tokens = u["prompt_tokens_details"].value("cached_tokens", 0);
      }
      usage_seen_ = true;
    }
    if (!chunk.contains("choices") || !chunk["choices"].is_array()) return;
    for (const json& choice : chunk["choices"]) {
      int tokens = 0;
      const json* logprobs =
          choice.contains("logprobs") && choice["logprobs"].is_object() ? &choice["logprobs"] : nullptr;
      if (logprobs) {
        const char* list = chat_ ? "content" : "tokens";
        if (logprobs->contains(list) && (*logprobs)[list].is_array())
          tokens = static_cast<int>((*logprobs)[list].size());
      }
      std::string text;
      if (chat_ && choice.contains("delta") && choice["delta"].contains("content") &&
          choice["delta"]["content"].is_string()) {
        text = choice["delta"]["content"].get<std::string>();
      } else if (!chat_ && choice.contains("text") && choice["text"].is_string()) {
        text = choice["text"].get<std::string>();
      }
      if (tokens == 0 && !text.empty()) tokens = 1;  // a server that sends no log-probabilities: one per chunk
      if (tokens == 0) continue;
      const double gap = std::chrono::duration<double>(now - last_).count();
      if (result_.streamed_tokens == 0) {
        result_.ttft = std::chrono::duration<double>(now - sent_).count();
      } else {
        for (int i = 0; i < tokens; ++i) result_.itl.push_back(gap / tokens);
      }
      result_.streamed_tokens += tokens;
      last_ = now;
    }
  }

  bool chat_;
  Clock::time_point sent_, last_;
  std::string buffer_;
  bool done_ = false;
  bool usage_seen_ = false;
  RequestResult result_;
};

// Sends one streamed completion and reads it to the end. Never throws: what goes wrong is the result's error.
RequestResult run_request(httplib::Client& client, const std::string& path, const std::string& body, bool chat,
                          const BenchServeArgs& args) {
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  if (!args.api_key.empty()) req.set_header("Authorization", "Bearer " + args.api_key);
  int status = 0;
  std::string error_body;
  const Clock::time_point sent = Clock::now();
  StreamReader reader(chat, sent);
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    if (status != 200) {
      if (error_body.size() < kMaxErrorBody) error_body.append(data, std::min(size, kMaxErrorBody - error_body.size()));
      return true;
    }
    reader.feed(std::string_view(data, size), Clock::now());
    return !reader.failed();
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  const bool sent_ok = client.send(req, res, error);
  RequestResult& r = reader.result();
  r.e2e = std::chrono::duration<double>(Clock::now() - sent).count();
  if (reader.failed()) return r;
  if (status != 0 && status != 200) {
    r.error = fmt::format("HTTP {}: {}", status, error_message(error_body));
  } else if (!sent_ok) {
    r.error = describe(error, args.timeout_s);
  } else if (!reader.done()) {
    r.error = "the stream ended without [DONE]";
  } else {
    r.ok = true;
    if (!reader.usage_seen()) r.output_tokens = r.streamed_tokens;
  }
  return r;
}

// ---- Prompts

// The text without U+FFFD (what a server makes of bytes that are not UTF-8: random byte tokens, or a character
// whose byte tokens were cut apart) and control characters but tab and newline, so that the text tokenizes back
// the same way when it is cut at a token.
std::string printable(const std::string& text) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (std::string_view(text).substr(i, kReplacement.size()) == kReplacement) {
      i += kReplacement.size() - 1;
    } else if (c >= 0x20 && c != 0x7F) {
      out += text[i];
    } else if (c == '\n' || c == '\t') {
      out += text[i];
    }
  }
  return out;
}

class PromptMaker {
 public:
  PromptMaker(ServerCalls& server, int32_t n_vocab, uint64_t seed) : server_(server), n_vocab_(n_vocab), rng_(seed) {}

  struct Prompt {
    std::string text;
    std::vector<int32_t> tokens;  // as /tokenize gives them without special tokens
  };

  // A text of exactly n tokens whose tokens start with `prefix` (canonical tokens, from an earlier make()).
  Prompt make(const std::vector<int32_t>& prefix, int n) {
    std::vector<int32_t> ids = prefix;
    top_up(ids, n);
    for (int attempt = 0; attempt < kPromptAttempts; ++attempt) {
      Prompt p{printable(server_.detokenize(ids)), {}};
      p.tokens = server_.tokenize(p.text, false, false);
      if (p.tokens.size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), p.tokens.begin())) {
        // The prefix's last token merged with what follows: draw the rest again.
        ids = prefix;
        top_up(ids, n);
        continue;
      }
      if (static_cast<int>(p.tokens.size()) == n) return p;
      // Too long: the first n tokens (a character cut in two there is dropped next round). Too short: draw what
      // is missing.
      ids = p.tokens;
      if (static_cast<int>(ids.size()) > n) ids.resize(n);
      top_up(ids, n);
    }
    throw std::runtime_error(fmt::format(
        "could not make a prompt of exactly {} tokens in {} rounds of /detokenize and /tokenize", n, kPromptAttempts));
  }

 private:
  void top_up(std::vector<int32_t>& ids, int n) {
    std::uniform_int_distribution<int32_t> id(0, n_vocab_ - 1);
    while (static_cast<int>(ids.size()) < n) ids.push_back(id(rng_));
  }

  ServerCalls& server_;
  int32_t n_vocab_;
  std::mt19937_64 rng_;
};

// The vocabulary's size, from the range /detokenize accepts: it answers 400 for an id outside it.
int32_t find_vocab_size(ServerCalls& server) {
  auto valid = [&](int32_t id) {
    const int status = server.post_status("/detokenize", {{"tokens", {id}}});
    if (status != 200 && status != 400) {
      throw std::runtime_error(fmt::format("POST /detokenize answered HTTP {}; bench-serve needs the server's "
                                           "/tokenize and /detokenize (tessera serve has them)",
                                           status));
    }
    return status == 200;
  };
  if (!valid(0)) throw std::runtime_error("POST /detokenize refused token id 0; cannot learn the vocabulary");
  int32_t low = 0, high = kVocabSearchLimit;  // low is valid; high is taken as invalid
  while (high - low > 1) {
    const int32_t mid = low + (high - low) / 2;
    (valid(mid) ? low : high) = mid;
  }
  return low + 1;
}

std::vector<int> find_end_tokens(ServerCalls& server) {
  std::vector<int> ids;
  for (const char* text : kEndTexts) {
    const std::vector<int32_t> special = server.tokenize(text, false, true);
    if (special.size() == 1 && server.tokenize(text, false, false) != special) ids.push_back(special[0]);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

// ---- Requests

struct RequestShape {
  bool chat = false;
  std::string path;
  json base;  // every field but the prompt
};

RequestShape request_shape(const BenchServeArgs& args, const std::string& model, const std::vector<int>& end_tokens) {
  RequestShape s;
  s.chat = args.endpoint == "chat";
  s.path = s.chat ? "/v1/chat/completions" : "/v1/completions";
  json bias = json::object();
  for (int id : end_tokens) bias[std::to_string(id)] = kBanBias;
  s.base = {{"model", model},
            {"max_tokens", args.output_len},
            {"temperature", args.temperature},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}},
            {"logit_bias", bias}};
  if (s.chat) {
    s.base["logprobs"] = true;
  } else {
    s.base["logprobs"] = 0;
  }
  return s;
}

std::string request_body(const RequestShape& shape, const std::string& prompt, int max_tokens) {
  json body = shape.base;
  if (shape.chat) {
    body["messages"] = json::array({{{"role", "user"}, {"content", prompt}}});
  } else {
    body["prompt"] = prompt;
  }
  body["max_tokens"] = max_tokens;
  return dump(body);
}

// ---- Statistics

struct Distribution {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;  // milliseconds
};

// Percentiles by linear interpolation between the closest ranks (NumPy's default, as vLLM reports them).
Distribution distribution(std::vector<double> seconds) {
  Distribution d;
  d.count = seconds.size();
  if (seconds.empty()) return d;
  std::sort(seconds.begin(), seconds.end());
  auto percentile = [&](double q) {
    const double rank = q / 100 * static_cast<double>(seconds.size() - 1);
    const size_t below = static_cast<size_t>(std::floor(rank));
    const size_t above = std::min(below + 1, seconds.size() - 1);
    return 1000 * (seconds[below] + (rank - static_cast<double>(below)) * (seconds[above] - seconds[below]));
  };
  double sum = 0;
  for (double s : seconds) sum += s;
  d.mean = 1000 * sum / static_cast<double>(seconds.size());
  d.p50 = percentile(50);
  d.p90 = percentile(90);
  d.p99 = percentile(99);
  return d;
}

struct LevelReport {
  int concurrency = 0;
  int requests = 0;
  int completed = 0;
  int errors = 0;
  int short_requests = 0;  // completed with fewer output tokens than asked for
  std::map<std::string, int> error_messages;
  double duration_s = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0, output_tokens = 0, streamed_tokens = 0;
  Distribution ttft, itl, e2e;

  double per_second(double x) const { return duration_s > 0 ? x / duration_s : 0; }
};

LevelReport run_level(const BenchServeArgs& args, const std::string& origin, const RequestShape& shape, int concurrency,
                      const std::vector<std::string>& prompts) {
  std::vector<RequestResult> results(prompts.size());
  std::atomic<size_t> next{0};
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min<int>(concurrency, static_cast<int>(prompts.size())); ++w) {
    workers.emplace_back([&] {
      const std::unique_ptr<httplib::Client> client = make_client(origin, args.timeout_s, true);
      for (size_t i; (i = next++) < prompts.size();) {
        results[i] =
            run_request(*client, shape.path, request_body(shape, prompts[i], args.output_len), shape.chat, args);
      }
    });
  }
  for (std::thread& t : workers) t.join();

  LevelReport r;
  r.concurrency = concurrency;
  r.requests = static_cast<int>(prompts.size());
  r.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> ttft, itl, e2e;
  for (const RequestResult& q : results) {
    if (!q.ok) {
      ++r.errors;
      ++r.error_messages[q.error];
      continue;
    }
    ++r.completed;
    r.short_requests += q.output_tokens < args.output_len ? 1 : 0;
    r.prompt_tokens += q.prompt_tokens;
    r.cached_tokens += q.cached_tokens;
    r.output_tokens += q.output_tokens;
    r.streamed_tokens += q.streamed_tokens;
    if (q.streamed_tokens > 0) ttft.push_back(q.ttft);
    itl.insert(itl.end(), q.itl.begin(), q.itl.end());
    e2e.push_back(q.e2e);
  }
  r.ttft = distribution(ttft);
  r.itl = distribution(itl);
  r.e2e = distribution(e2e);
  return r;
}

// ---- Output

struct RunInfo {
  std::string model;
  std::vector<int> end_tokens;
  int prompt_overhead = 0;  // tokens the server adds to a prompt's text
  uint64_t seed = 0;
};

void print_markdown(const BenchServeArgs& args, const RunInfo& info, const std::vector<LevelReport>& levels) {
  print_stdout("server: {} ({}, model {}); prompts of {} tokens{} (seed {}), {} output tokens, temperature {}\n\n",
               args.url, args.endpoint == "chat" ? "/v1/chat/completions" : "/v1/completions", info.model,
               args.input_len, args.shared_prefix > 0 ? fmt::format(" ({:.0f}% shared)", 100 * args.shared_prefix) : "",
               info.seed, args.output_len, args.temperature);
  print_stdout("| concurrency | requests | errors | prompt tok | cached | req/s | output tok/s | total tok/s "
               "| TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | E2E p50 / p99 ms |\n");
  print_stdout("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const LevelReport& l : levels) {
    const double mean_prompt = l.completed ? static_cast<double>(l.prompt_tokens) / l.completed : 0;
    const double cached = l.prompt_tokens ? 100.0 * static_cast<double>(l.cached_tokens) / l.prompt_tokens : 0;
    auto milliseconds = [](const Distribution& d, const char* format, std::initializer_list<double> values) {
      if (d.count == 0) return std::string("-");
      std::vector<std::string> parts;
      for (double v : values) parts.push_back(fmt::format(fmt::runtime(format), v));
      return fmt::format("{}", fmt::join(parts, " / "));
    };
    print_stdout("| {} | {} | {} | {:.1f} | {:.0f}% | {:.2f} | {:.1f} | {:.1f} | {} | {} | {} |\n", l.concurrency,
                 l.requests, l.errors, mean_prompt, cached, l.per_second(l.completed),
                 l.per_second(static_cast<double>(l.output_tokens)),
                 l.per_second(static_cast<double>(l.prompt_tokens + l.output_tokens)),
                 milliseconds(l.ttft, "{:.0f}", {l.ttft.p50, l.ttft.p90, l.ttft.p99}),
                 milliseconds(l.itl, "{:.1f}", {l.itl.p50, l.itl.p90, l.itl.p99}),
                 milliseconds(l.e2e, "{:.0f}", {l.e2e.p50, l.e2e.p99}));
  }
  for (const LevelReport& l : levels) {
    if (l.short_requests > 0) {
      print_stdout("\nconcurrency {}: {} requests ended before {} tokens (an end-of-generation token not banned, or "
                   "the context's end; see --end-tokens)\n",
                   l.concurrency, l.short_requests, args.output_len);
    }
    for (const auto& [message, count] : l.error_messages) {
      print_stdout("\nconcurrency {}: {} x {}\n", l.concurrency, count, message);
    }
  }
}

void print_json(const BenchServeArgs& args, const RunInfo& info, const std::vector<LevelReport>& levels) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const LevelReport& l : levels) {
    nlohmann::ordered_json o;
    o["url"] = args.url;
    o["endpoint"] = args.endpoint;
    o["model"] = info.model;
    o["input_len"] = args.input_len;
    o["output_len"] = args.output_len;
    o["shared_prefix"] = args.shared_prefix;
    o["temperature"] = args.temperature;
    o["seed"] = info.seed;
    o["end_tokens"] = info.end_tokens;
    o["prompt_overhead_tokens"] = info.prompt_overhead;
    o["concurrency"] = l.concurrency;
    o["requests"] = l.requests;
    o["completed"] = l.completed;
    o["errors"] = l.errors;
    o["error_messages"] = l.error_messages;
    o["short_requests"] = l.short_requests;
    o["duration_s"] = l.duration_s;
    o["prompt_tokens"] = l.prompt_tokens;
    o["cached_tokens"] = l.cached_tokens;
    o["output_tokens"] = l.output_tokens;
    o["streamed_tokens"] = l.streamed_tokens;
    o["request_throughput"] = l.per_second(l.completed);
    o["output_tokens_per_s"] = l.per_second(static_cast<double>(l.output_tokens));
    o["total_tokens_per_s"] = l.per_second(static_cast<double>(l.prompt_tokens + l.output_tokens));
    // Latencies in milliseconds; null where there is no sample (no request completed, or one token each).
    for (const auto& [name, d] : {std::pair{"ttft", l.ttft}, std::pair{"itl", l.itl}, std::pair{"e2e", l.e2e}}) {
      for (const auto& [stat, value] :
           {std::pair{"mean", d.mean}, std::pair{"p50", d.p50}, std::pair{"p90", d.p90}, std::pair{"p99", d.p99}}) {
        o[fmt::format("{}_{}_ms", name, stat)] = d.count ? nlohmann::ordered_json(value) : nlohmann::ordered_json();
      }
    }
    out.push_back(std::move(o));
  }
  print_stdout("{}\n", out.dump(2));
}

// ---- The command

void validate(const BenchServeArgs& a) {
  for (int c : a.concurrency) {
    if (c < 1 || c > kMaxConcurrency) {
      throw UsageError(fmt::format("--concurrency values must be in [1, {}] (got {})", kMaxConcurrency, c));
    }
  }
  for (int n : a.requests)
    if (n < 1) throw UsageError(fmt::format("--requests must be at least 1 (got {})", n));
  if (a.requests.size() != 1 && a.requests.size() != a.concurrency.size()) {
    throw UsageError(fmt::format("--requests takes one count, or one per --concurrency level ({} given for {} levels)",
                                 a.requests.size(), a.concurrency.size()));
  }
  if (a.input_len < 1) throw UsageError(fmt::format("--input-len must be at least 1 (got {})", a.input_len));
  if (a.output_len < 1) throw UsageError(fmt::format("--output-len must be at least 1 (got {})", a.output_len));
  if (!(a.shared_prefix >= 0 && a.shared_prefix < 1)) {
    throw UsageError(fmt::format("--shared-prefix must be in [0, 1) (got {})", a.shared_prefix));
  }
  if (!(a.temperature >= 0 && a.temperature <= 2)) {
    throw UsageError(fmt::format("--temperature must be in [0, 2] (got {})", a.temperature));
  }
  if (a.timeout_s < 1) throw UsageError(fmt::format("--timeout must be at least 1 s (got {})", a.timeout_s));
}

void run_bench_serve(BenchServeArgs& args) {
  validate(args);
  const std::string origin = server_origin(args.url);
  ServerCalls server(args, origin);

  RunInfo info;
  const json models = server.get("/v1/models");
  if (!args.model.empty()) {
    info.model = args.model;
  } else if (models.contains("data") && models["data"].is_array() && !models["data"].empty() &&
             models["data"][0].contains("id") && models["data"][0]["id"].is_string()) {
    info.model = models["data"][0]["id"].get<std::string>();
  } else {
    throw std::runtime_error(fmt::format("GET {}/v1/models lists no model; name one with --model", args.url));
  }
  const int32_t n_vocab = find_vocab_size(server);
  info.end_tokens = args.end_tokens.empty() ? find_end_tokens(server) : args.end_tokens;
  if (info.end_tokens.empty()) {
    fmt::print(stderr, "bench-serve: no end-of-generation token found; requests may end early (--end-tokens)\n");
  }
  const RequestShape shape = request_shape(args, info.model, info.end_tokens);

  // A first request, untimed: it checks the endpoint, pages the model in, and measures the tokens the server adds
  // around a prompt's text (BOS, the chat template).
  const std::string probe_text = "Hello";
  const std::unique_ptr<httplib::Client> probe_client = make_client(origin, args.timeout_s, false);
  const RequestResult probe =
      run_request(*probe_client, shape.path, request_body(shape, probe_text, 2), shape.chat, args);
  if (!probe.ok)
    throw std::runtime_error(fmt::format("the first request to {}{} failed: {}", args.url, shape.path, probe.error));
  info.prompt_overhead = probe.prompt_tokens - static_cast<int>(server.tokenize(probe_text, false, false).size());
  const int text_len = args.input_len - info.prompt_overhead;
  if (text_len < 1) {
    throw UsageError(fmt::format("--input-len {} leaves no room for text: the server adds {} tokens to every prompt",
                                 args.input_len, info.prompt_overhead));
  }
  const int prefix_len = static_cast<int>(std::lround(args.shared_prefix * text_len));

  // Every level gets prompts of its own (and its own shared prefix), so no level finds another's in the cache.
  info.seed = args.seed ? *args.seed : std::random_device()();
  PromptMaker maker(server, n_vocab, info.seed);
  std::vector<std::vector<std::string>> prompts(args.concurrency.size());
  for (size_t level = 0; level < args.concurrency.size(); ++level) {
    const int n = args.requests.size() == 1 ? args.requests[0] : args.requests[level];
    fmt::print(stderr, "bench-serve: making {} prompts of {} tokens for concurrency {}\n", n, args.input_len,
               args.concurrency[level]);
    const std::vector<int32_t> prefix = prefix_len > 0 ? maker.make({}, prefix_len).tokens : std::vector<int32_t>{};
    for (int i = 0; i < n; ++i) prompts[level].push_back(maker.make(prefix, text_len).text);
  }

  std::vector<LevelReport> levels;
  for (size_t level = 0; level < args.concurrency.size(); ++level) {
    levels.push_back(run_level(args, origin, shape, args.concurrency[level], prompts[level]));
    const LevelReport& l = levels.back();
    fmt::print(stderr, "bench-serve: concurrency {}: {} requests in {:.1f} s, {} errors, {:.1f} output tokens/s\n",
               l.concurrency, l.requests, l.duration_s, l.errors, l.per_second(static_cast<double>(l.output_tokens)));
  }
  if (args.output == "json") {
    print_json(args, info, levels);
  } else {
    print_markdown(args, info, levels);
  }
}

}  // namespace

void add_bench_serve_command(CLI::App& root) {
  auto args = std::make_shared<BenchServeArgs>();
  CLI::App* cmd = root.add_subcommand(
      "bench-serve",
      "Load-test an OpenAI-compatible server (tessera serve): streamed requests at several concurrency levels; "
      "request and token throughput, time to first token, inter-token and end-to-end latency");
  cmd->add_option("--url", args->url, "The server's root")->capture_default_str();
  cmd->add_option("--api-key", args->api_key, "Sent as 'Authorization: Bearer KEY'");
  cmd->add_option("--model", args->model, "The model field of the requests (default: the first of /v1/models)");
  cmd->add_option("--endpoint", args->endpoint,
                  "completions (/v1/completions) or chat (/v1/chat/completions, the prompt as one user message)")
      ->check(CLI::IsMember({"completions", "chat"}))
      ->capture_default_str();
  cmd->add_option("--concurrency", args->concurrency, "Requests kept in flight, one level after another: 1,8,64")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--requests", args->requests, "Requests at each level: one count, or one per level")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--input-len", args->input_len, "Prompt tokens of each request, as the server counts them")
      ->capture_default_str();
  cmd->add_option("--output-len", args->output_len, "Tokens generated for each request")->capture_default_str();
  cmd->add_option("--shared-prefix", args->shared_prefix,
                  "The fraction of each prompt's text that is the same in every request of a level (prefix cache)")
      ->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "Sampling temperature of the requests (0: greedy)")
      ->capture_default_str();
  cmd->add_option("--end-tokens", args->end_tokens,
                  "Token ids banned (logit_bias -100) so that requests run to --output-len (default: found through "
                  "/tokenize)")
      ->delimiter(',');
  cmd->add_option("--seed", args->seed, "Seed of the random prompts (default: a random one, shown in the report)");
  cmd->add_option("--timeout", args->timeout_s, "Seconds a request may wait for the server's next bytes")
      ->capture_default_str();
  cmd->add_option("--output", args->output, "md or json")->check(CLI::IsMember({"md", "json"}))->capture_default_str();
  cmd->footer(
      "Prompts: random token ids turned into text by the server's /detokenize (less U+FFFD and control\n"
      "characters), tokenized back by /tokenize and trimmed or topped up until the text is exactly --input-len\n"
      "tokens, less those the server adds (BOS, the chat template), measured by a first untimed request. Each\n"
      "level gets prompts of its own; with --shared-prefix F, the first F of the text is the same in all of a\n"
      "level's requests.\n"
      "Output: max_tokens = --output-len, and logit_bias -100 on the end-of-generation tokens: those of </s>,\n"
      "<|endoftext|>, <|eot_id|>, <|im_end|>, <end_of_turn> and the like that are one special token in the\n"
      "server's vocabulary. Requests that still end early are counted as short.\n"
      "Timing: TTFT from sending to the first chunk that carries a token; each later chunk of k tokens gives k\n"
      "inter-token latencies of its gap / k, counted by the chunk's log-probabilities (every request asks for\n"
      "them, which costs the server a log-softmax per token); E2E to the end of the stream. Throughput is over\n"
      "the level's wall time; prompt, cached and output tokens are the server's usage counts.");
  cmd->callback([args] { run_bench_serve(*args); });
}

}  // namespace tessera::cli
