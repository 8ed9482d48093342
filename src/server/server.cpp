#include "server/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <stdexcept>

#include "server/connection_threads.h"
#include "server/web_assets.h"

namespace tessera::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr auto kStreamPoll = std::chrono::milliseconds(100);  // how often a quiet stream checks its client
// An idle keep-alive connection holds one of the HTTP threads, and cpp-httplib 0.11 waits out this timeout
// before its threads can stop: a short one keeps shutdown quick and idle clients from starving new connections.
// Clients read it from the Keep-Alive header and close their side first.
constexpr time_t kKeepAliveSeconds = 2;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void reply_error(httplib::Response& res, const ApiError& e) { reply(res, e.status(), e.body()); }

std::string sse(const json& chunk) { return "data: " + dump(chunk) + "\n\n"; }

// With stream_options.include_usage every chunk but the last carries "usage": null, as OpenAI's do.
std::string sse_chunk(json chunk, bool include_usage) {
  if (include_usage) chunk["usage"] = nullptr;
  return sse(chunk);
}

// Reads a request body, at most max_bytes of it once decoded. Bodies are read here rather than by cpp-httplib,
// whose 0.11 applies its payload limit only to a Content-Length (a chunked or compressed body, or one without a
// length, would be read whole into memory) and cuts bodies sent as application/x-www-form-urlencoded, curl -d's
// default, at 8 KiB.
std::string read_body(const httplib::Request& req, const httplib::Response& res, const httplib::ContentReader& reader,
                      size_t max_bytes) {
  if (req.is_multipart_form_data()) throw ApiError(415, "the request body must be JSON, not multipart/form-data");
  std::string body;
  bool over = false;
  const bool complete = reader([&](const char* data, size_t size) {
    // Past the limit the rest is read and dropped, as cpp-httplib does with a Content-Length over it: a client
    // still sending when the connection closed would see a reset instead of the 413.
    over = over || size > max_bytes - body.size();
    if (!over) body.append(data, size);
    return true;
  });
  // cpp-httplib sets 413 itself for a Content-Length over the limit, after reading past the body.
  if (over || res.status == 413) {
    throw ApiError(413, fmt::format("the request body is over the limit of {} bytes", max_bytes));
  }
  if (!complete) throw ApiError(400, "the request body could not be read (a broken chunked encoding?)");
  return body;
}

// Tokens as the text shows them: control tokens (a "<s>" the model generates) print nothing there, so they
// print nothing here either, and a choice's logprobs tokens spell its text.
std::vector<LogprobText> logprob_texts(const tokenizer::Tokenizer& tokenizer,
                                       const std::vector<engine::TokenLogprob>& logprobs) {
  std::vector<LogprobText> texts;
  for (const engine::TokenLogprob& lp : logprobs) {
    LogprobText t{tokenizer.token_to_piece(lp.token, false), lp.logprob, {}};
    for (const auto& [token, p] : lp.top) t.top.emplace_back(tokenizer.token_to_piece(token, false), p);
    texts.push_back(std::move(t));
  }
  return texts;
}

}  // namespace

// One HTTP request's choices (n of them, times the prompts of a completions request) and the events their engine
// requests send: text as it is released, then the end. Engine requests reach it through a weak pointer, so a reply
// that is gone (its client closed the connection) leaves nothing dangling.
struct Server::Job {
  Endpoint endpoint;
  ApiRequest api;
  ResponseHeader header;
  std::vector<std::shared_ptr<engine::Request>> requests;  // by choice index
  std::vector<int> leaders;                                 // the choice that evaluates each prompt
  struct Event {
    int index;
    std::string text;
    std::vector<engine::TokenLogprob> logprobs;
    bool end = false;
  };
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Event> events;
  int n_ended = 0;

  int n_choices() const { return static_cast<int>(requests.size()); }
  void push(Event e) {
    {
      const std::lock_guard lock(mutex);
      n_ended += e.end ? 1 : 0;
      events.push_back(std::move(e));
    }
    changed.notify_all();
  }
  void cancel() {
    for (const auto& r : requests) r->cancel();
  }
  Usage usage() const {
    Usage u;
    for (int leader : leaders) {
      u.prompt_tokens += requests[leader]->timings().prompt_tokens;
      u.cached_tokens += requests[leader]->timings().cached_prompt_tokens;
    }
    for (const auto& r : requests) u.completion_tokens += static_cast<int>(r->generated().size());
    return u;
  }
};

Server::Server(ServerOptions options) : options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

int Server::start() {
  // A thread per connection: every running or queued request holds one while it waits for its tokens, and a few
  // more answer the requests that are refused.
  const size_t threads = static_cast<size_t>(options_.max_sequences) + options_.max_queue + 8;
  http_->new_task_queue = [threads] { return new ConnectionThreads(threads); };
  http_->set_payload_max_length(options_.max_body_bytes);
  http_->set_keep_alive_timeout(kKeepAliveSeconds);
  route();
  socket_t listening = INVALID_SOCKET;
  http_->set_socket_options([&listening](socket_t sock) {
    httplib::default_socket_options(sock);
    listening = sock;
  });
  int port = options_.port;
  if (port == 0) {
    port = http_->bind_to_any_port(options_.host);
    if (port < 0) throw std::runtime_error(fmt::format("cannot listen on {}: no free port", options_.host));
  } else if (!http_->bind_to_port(options_.host, port)) {
    throw std::runtime_error(fmt::format("cannot listen on {}:{} (in use, or not an address of this machine)",
                                         options_.host, port));
  }
  // cpp-httplib 0.11 listens with a backlog of 5: in a burst of new connections the rest would be dropped and
  // retried by their clients a second later. Listening again on the bound socket raises it.
  if (::listen(listening, SOMAXCONN) != 0) {
    throw std::runtime_error(fmt::format("cannot listen on {}:{}: {}", options_.host, port, std::strerror(errno)));
  }
  http_->set_socket_options(httplib::default_socket_options);  // the hook above refers to this frame
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  return port;
}

void Server::serve(ServedModel model) {
  model_ = std::make_unique<ServedModel>(std::move(model));
  scheduler_ = std::make_unique<engine::Scheduler>(
      *model_->engine, engine::SchedulerOptions{options_.max_sequences, options_.max_step_tokens});
  gauges_.kv_blocks_total = model_->engine->kv().n_blocks();
  engine_thread_ = std::thread([this] { engine_loop(); });
  ready_ = true;
}

void Server::shutdown(std::chrono::milliseconds grace) {
  if (!http_) return;
  stopping_ = true;
  const auto deadline = Clock::now() + grace;
  while (live_jobs_ > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (scheduler_) {
    // What is still running ends as cancelled; its replies then finish.
    engine_stop_ = true;
    wake_engine();
    if (engine_thread_.joinable()) engine_thread_.join();
    scheduler_->cancel_all();
  }
  http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  http_.reset();
}

void Server::wake_engine() {
  {
    const std::lock_guard lock(wake_mutex_);
    work_pending_ = true;
  }
  wake_.notify_one();
}

void Server::engine_loop() {
  while (!engine_stop_) {
    bool worked = false;
    try {
      worked = scheduler_->step();
      if (scheduler_->last_step_sequences() > 0) metrics_.observe_step(scheduler_->last_step_sequences());
    } catch (const std::exception& e) {
      // A failed forward call fails the requests it held; the server goes on with the next ones.
      scheduler_->fail_all(std::string("the engine failed: ") + e.what());
      worked = true;
    }
    {
      const engine::KvBlocks& kv = model_->engine->kv();
      const std::lock_guard lock(gauges_mutex_);
      gauges_.running = static_cast<int64_t>(scheduler_->n_running());
      gauges_.waiting = static_cast<int64_t>(scheduler_->n_waiting());
      gauges_.kv_blocks_used = kv.used_blocks();
      gauges_.kv_blocks_cached = kv.cached_blocks();
    }
    if (!worked) {
      std::unique_lock lock(wake_mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(50), [&] { return work_pending_ || engine_stop_.load(); });
      work_pending_ = false;
    }
  }
}

Metrics::Gauges Server::gauges() const {
  const std::lock_guard lock(gauges_mutex_);
  return gauges_;
}

bool Server::authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options_.api_key.empty() || req.get_header_value("Authorization") == "Bearer " + options_.api_key) return true;
  reply_error(res, ApiError(401, "a valid API key is needed: send it as 'Authorization: Bearer KEY'", {},
                            "invalid_request_error", "invalid_api_key"));
  return false;
}

void Server::route() {
  httplib::Server& h = *http_;
  h.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_ && !stopping_) {
      reply(res, 200, {{"status", "ok"}});
    } else {
      reply(res, 503, {{"status", stopping_ ? "stopping" : "loading"}});
    }
  });
  h.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(gauges()), "text/plain; version=0.0.4");
  });
  // Every other route answers 503 until the model is loaded, and needs the API key where one is set.
  auto admitted = [this](const httplib::Request& req, httplib::Response& res) {
    if (!ready_ || stopping_) {
      metrics_.count_request("rejected");
      reply_error(res, ApiError(503, stopping_ ? "the server is shutting down" : "the model is still loading", {},
                                "server_error"));
      return false;
    }
    if (!authorized(req, res)) {
      metrics_.count_request("invalid");
      return false;
    }
    return true;
  };
  auto refused = [this](httplib::Response& res, const ApiError& e) {
    metrics_.count_request(e.status() == 429 ? "rejected" : "invalid");
    reply_error(res, e);
  };
  auto api = [admitted, refused](auto handler) -> httplib::Server::Handler {
    return [admitted, refused, handler](const httplib::Request& req, httplib::Response& res) {
      if (!admitted(req, res)) return;
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        refused(res, e);
      }
    };
  };
  // The same for routes that take a body, read once the request is admitted. A reply that leaves (some of) the
  // body unread closes the connection: what is left of it could not be told from a next request.
  auto api_with_body = [this, admitted, refused](auto handler) -> httplib::Server::HandlerWithContentReader {
    return [this, admitted, refused, handler](const httplib::Request& req, httplib::Response& res,
                                              const httplib::ContentReader& reader) {
      if (!admitted(req, res)) {
        res.set_header("Connection", "close");
        return;
      }
      std::string body;
      try {
        body = read_body(req, res, reader, options_.max_body_bytes);
      } catch (const ApiError& e) {
        refused(res, e);
        res.set_header("Connection", "close");
        return;
      }
      try {
        handler(body, res);
      } catch (const ApiError& e) {
        refused(res, e);
      }
    };
  };
  h.Get("/v1/models", api([this](const httplib::Request&, httplib::Response& res) {
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count();
    reply(res, 200,
          {{"object", "list"},
           {"data", json::array({{{"id", model_->name},
                                  {"object", "model"},
                                  {"created", created},
                                  {"owned_by", "tessera"},
                                  {"context_length", model_->engine->n_ctx()}}})}});
  }));
  h.Post("/v1/chat/completions", api_with_body([this](const std::string& body, httplib::Response& res) {
    handle_completion(Endpoint::ChatCompletions, body, res);
  }));
  h.Post("/v1/completions", api_with_body([this](const std::string& body, httplib::Response& res) {
    handle_completion(Endpoint::Completions, body, res);
  }));
  h.Post("/tokenize", api_with_body([this](const std::string& text, httplib::Response& res) {
    const json body = parse_body_object(text);
    if (!body.contains("content") || !body["content"].is_string()) {
      throw ApiError(400, "'content' must be a string", "content");
    }
    auto flag = [&body](const char* name, bool absent) {
      const auto it = body.find(name);
      if (it == body.end() || it->is_null()) return absent;
      if (!it->is_boolean()) throw ApiError(400, fmt::format("'{}' must be true or false", name), name);
      return it->get<bool>();
    };
    const bool add_special = flag("add_special", true), parse_special = flag("parse_special", false);
    const std::vector<int32_t> tokens =
        model_->tokenizer.encode(body["content"].get<std::string>(), add_special, parse_special);
    reply(res, 200, {{"tokens", tokens}});
    metrics_.count_request("ok");
  }));
  h.Post("/detokenize", api_with_body([this](const std::string& text, httplib::Response& res) {
    const json body = parse_body_object(text);
    if (!body.contains("tokens") || !body["tokens"].is_array()) {
      throw ApiError(400, "'tokens' must be an array of token ids", "tokens");
    }
    std::vector<int32_t> ids;
    for (const json& t : body["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= model_->tokenizer.n_vocab()) {
        throw ApiError(400, fmt::format("'tokens' must hold token ids in [0, {})", model_->tokenizer.n_vocab()), "tokens");
      }
      ids.push_back(t.get<int32_t>());
    }
    reply(res, 200, {{"content", model_->tokenizer.decode(ids)}});
    metrics_.count_request("ok");
  }));
  // The web page and its files.
  h.Get(R"(/.*)", [](const httplib::Request& req, httplib::Response& res) {
    const WebAsset* asset = find_web_asset(req.path);
    if (!asset) {
      reply_error(res, ApiError(404, fmt::format("no such route: GET {}", req.path), {}, "invalid_request_error"));
      return;
    }
    res.set_content(asset->body.data(), asset->body.size(), std::string(asset->content_type));
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                   "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  });
  // Other POSTs are answered without reading their bodies (cpp-httplib would read them whole).
  h.Post(R"(/.*)", [](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader&) {
    reply_error(res, ApiError(404, fmt::format("no such route: POST {}", req.path)));
    res.set_header("Connection", "close");
  });
  // So are other methods, before routing: cpp-httplib reads the bodies of PUT, PATCH, DELETE and PRI requests.
  h.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" || req.method == "HEAD" || req.method == "POST") return httplib::Server::HandlerResponse::Unhandled;
    reply_error(res, ApiError(405, fmt::format("method {} is not allowed here", req.method)));
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });
  // Whatever else fails (a request cpp-httplib cannot parse, say) still answers in OpenAI's error shape.
  h.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) {
      reply_error(res, ApiError(404, fmt::format("no such route: {} {}", req.method, req.path)));
    } else {
      reply_error(res, ApiError(res.status, fmt::format("the request failed (HTTP {})", res.status)));
    }
  });
  h.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    metrics_.count_request("error");
    reply_error(res, ApiError(500, "internal error: " + what, {}, "server_error"));
  });
}

void Server::handle_completion(Endpoint endpoint, const std::string& body, httplib::Response& res) {
  const engine::Engine& engine = *model_->engine;
  auto job = std::make_shared<Job>();
  job->endpoint = endpoint;
  job->api = parse_request(endpoint, body, model_->sampling, engine.n_vocab());
  const ApiRequest& api = job->api;
  const uint64_t id = next_id_++;
  job->header = {fmt::format("{}-{:016x}", endpoint == Endpoint::ChatCompletions ? "chatcmpl" : "cmpl", id),
                 std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch()).count(),
                 api.model.empty() ? model_->name : api.model};

  // Prompts as tokens, each checked against the context before anything is queued.
  std::vector<std::vector<int32_t>> prompts;
  if (endpoint == Endpoint::ChatCompletions) {
    try {
      prompts.push_back(model_->chat_prompt(api.messages));
    } catch (const std::runtime_error& e) {
      throw ApiError(400, std::string("the chat template refused the messages: ") + e.what(), "messages");
    }
  } else {
    for (const std::string& p : api.prompts) prompts.push_back(model_->tokenizer.encode(p, true, false));
  }
  const bool context_shift = api.context_shift.value_or(model_->context_shift);
  for (const std::vector<int32_t>& p : prompts) {
    const int64_t wanted = static_cast<int64_t>(p.size()) + api.max_tokens.value_or(1);
    if (p.empty()) throw ApiError(400, "the prompt gives no tokens", endpoint == Endpoint::ChatCompletions ? "messages" : "prompt");
    if (wanted > engine.n_ctx() && !(context_shift && p.size() < static_cast<size_t>(engine.n_ctx()))) {
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                                 "({} in the {}, {} in the completion). Please reduce the length of the {} or "
                                 "completion.",
                                 engine.n_ctx(), wanted, p.size(),
                                 endpoint == Endpoint::ChatCompletions ? "messages" : "prompt",
                                 api.max_tokens.value_or(1), endpoint == Endpoint::ChatCompletions ? "messages" : "prompt"),
                     endpoint == Endpoint::ChatCompletions ? "messages" : "prompt", "invalid_request_error",
                     "context_length_exceeded");
    }
  }
  std::random_device random;
  const std::weak_ptr<Job> weak = job;
  std::vector<std::vector<std::shared_ptr<engine::Request>>> groups;
  for (const std::vector<int32_t>& prompt : prompts) {
    groups.emplace_back();
    job->leaders.push_back(job->n_choices());
    for (int i = 0; i < api.n; ++i) {
      const int index = job->n_choices();
      engine::RequestOptions ro;
      ro.prompt = prompt;
      ro.max_tokens = api.max_tokens.value_or(0);
      ro.sampling = api.sampling;
      ro.sampling.seed = api.seed_given ? api.sampling.seed + static_cast<uint64_t>(index)
                                        : (static_cast<uint64_t>(random()) << 32 | random());
      ro.stop = api.stop;
      ro.top_logprobs = api.top_logprobs;
      ro.context_shift = context_shift;
      ro.keep = model_->keep;
      auto on_text = [weak, index](const engine::Request&, std::string_view text,
                                   std::span<const engine::TokenLogprob> logprobs) {
        if (const auto j = weak.lock()) j->push({index, std::string(text), {logprobs.begin(), logprobs.end()}});
      };
      auto on_finish = [this, weak, index](const engine::Request& r) {
        const engine::RequestTimings& t = r.timings();
        metrics_.add_tokens(t.prompt_tokens, t.cached_prompt_tokens, static_cast<int64_t>(r.generated().size()));
        if (!r.generated().empty()) metrics_.observe_first_token(t.first_token_seconds);
        if (const auto j = weak.lock()) j->push({index, {}, {}, true});
      };
      auto request = std::make_shared<engine::Request>(std::move(ro), model_->tokenizer, on_text, on_finish);
      job->requests.push_back(request);
      groups.back().push_back(request);
    }
  }
  {
    // Checking the room and taking it are one step: requests arriving together cannot all see the same room.
    // Running and waiting requests are counted together: requests that just arrived wait for the engine's next
    // step even where sequences are free, and must not be refused as if they filled the queue.
    const std::lock_guard lock(admission_mutex_);
    const size_t n_new = prompts.size() * static_cast<size_t>(api.n);
    const size_t n_held = scheduler_->n_running() + scheduler_->n_waiting();
    if (n_held + n_new > static_cast<size_t>(options_.max_sequences) + static_cast<size_t>(options_.max_queue)) {
      throw ApiError(429,
                     fmt::format("the server is busy: {} requests are running or queued (--max-sequences {}, "
                                 "--max-queue {}); retry later",
                                 n_held, options_.max_sequences, options_.max_queue),
                     {}, "server_error", "queue_full");
    }
    try {
      for (auto& group : groups) scheduler_->add_group(group);
    } catch (const std::invalid_argument& e) {
      throw ApiError(400, e.what());
    }
  }
  ++live_jobs_;
  wake_engine();
  if (api.stream) {
    stream_reply(job, res);
  } else {
    whole_reply(job, res);
  }
}

void Server::whole_reply(const std::shared_ptr<Job>& job, httplib::Response& res) {
  std::vector<Choice> choices(job->n_choices());
  std::vector<std::vector<engine::TokenLogprob>> logprobs(job->n_choices());
  {
    std::unique_lock lock(job->mutex);
    job->changed.wait(lock, [&] { return job->n_ended == job->n_choices(); });
    for (Job::Event& e : job->events) {
      choices[e.index].text += e.text;
      logprobs[e.index].insert(logprobs[e.index].end(), e.logprobs.begin(), e.logprobs.end());
    }
  }
  --live_jobs_;
  for (int i = 0; i < job->n_choices(); ++i) {
    const engine::Request& r = *job->requests[i];
    if (r.finish_reason() == engine::FinishReason::Error) {
      metrics_.count_request("error");
      reply_error(res, ApiError(500, r.error(), {}, "server_error"));
      return;
    }
    if (r.finish_reason() == engine::FinishReason::Cancelled) {
      metrics_.count_request("stopped");
      reply_error(res, ApiError(503, "the server is shutting down", {}, "server_error"));
      return;
    }
    choices[i].finish = r.finish_reason();
    if (job->api.top_logprobs >= 0) {
      const std::vector<LogprobText> texts = logprob_texts(model_->tokenizer, logprobs[i]);
      choices[i].logprobs = job->endpoint == Endpoint::ChatCompletions ? chat_logprobs(texts) : completion_logprobs(texts, 0);
    }
  }
  metrics_.count_request("ok");
  reply(res, 200, completion_response(job->endpoint, job->header, choices, job->usage()));
}

void Server::stream_reply(const std::shared_ptr<Job>& job, httplib::Response& res) {
  struct StreamState {
    std::vector<bool> started;
    std::vector<size_t> text_offsets;
    bool done = false;
  };
  auto state = std::make_shared<StreamState>();
  state->started.assign(job->n_choices(), false);
  state->text_offsets.assign(job->n_choices(), 0);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, job, state](size_t, httplib::DataSink& sink) {
        std::deque<Job::Event> events;
        bool all_ended;
        {
          std::unique_lock lock(job->mutex);
          job->changed.wait_for(lock, kStreamPoll, [&] { return !job->events.empty(); });
          events.swap(job->events);
          all_ended = job->n_ended == job->n_choices();
        }
        if (!sink.is_writable()) return false;
        const ApiRequest& api = job->api;
        std::string out;
        std::optional<ApiError> failure;
        for (Job::Event& e : events) {
          const engine::Request& r = *job->requests[e.index];
          if (job->endpoint == Endpoint::ChatCompletions && !state->started[e.index]) {
            out += sse_chunk(stream_chunk(job->endpoint, job->header, e.index, "", true, std::nullopt, nullptr),
                             api.include_usage);
          }
          state->started[e.index] = true;
          if (e.end) {
            if (r.finish_reason() == engine::FinishReason::Error) {
              failure = ApiError(500, r.error(), {}, "server_error");
            } else if (r.finish_reason() == engine::FinishReason::Cancelled) {
              failure = ApiError(503, "the server is shutting down", {}, "server_error");
            } else {
              out += sse_chunk(stream_chunk(job->endpoint, job->header, e.index, "", false, r.finish_reason(), nullptr),
                               api.include_usage);
            }
            continue;
          }
          json logprobs = nullptr;
          if (api.top_logprobs >= 0) {
            const std::vector<LogprobText> texts = logprob_texts(model_->tokenizer, e.logprobs);
            logprobs = job->endpoint == Endpoint::ChatCompletions
                           ? chat_logprobs(texts)
                           : completion_logprobs(texts, state->text_offsets[e.index]);
          }
          state->text_offsets[e.index] += e.text.size();
          out += sse_chunk(stream_chunk(job->endpoint, job->header, e.index, e.text, false, std::nullopt, logprobs),
                           api.include_usage);
        }
        if (failure) {
          // After the stream has started, an error is a data event of its own; clients understand it.
          out += sse(failure->body()) + "data: [DONE]\n\n";
          state->done = true;
          metrics_.count_request(failure->status() == 503 ? "stopped" : "error");
        } else if (all_ended) {
          if (api.include_usage) out += sse(usage_chunk(job->endpoint, job->header, job->usage()));
          out += "data: [DONE]\n\n";
          state->done = true;
          metrics_.count_request("ok");
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;
        if (state->done) sink.done();
        return true;
      },
      [this, job, state](bool) {
        // The reply is over: finished, or its client is gone, whose requests then stop at the next step.
        if (!state->done) {
          job->cancel();
          metrics_.count_request("stopped");
          wake_engine();
        }
        --live_jobs_;
      });
}

}  // namespace tessera::server
