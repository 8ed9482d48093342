// `tessera serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of the continuous-batching scheduler.
// HTTP threads parse and validate requests (openai.h), turn them into engine requests and wait on their events;
// one engine thread runs scheduler steps as long as any request is alive. The frontend stays thin: batching,
// prefix sharing, preemption and cancellation are the scheduler's (engine/scheduler.h).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace tessera::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port
  std::string api_key;             // empty: no key needed
  int max_sequences = 256;         // requests running at once
  int max_queue = 1024;            // requests waiting beyond those; more are refused (429)
  size_t max_body_bytes = 8u << 20;
  int max_step_tokens = 512;       // tokens in one forward call
};

// What the server serves, once the model is loaded.
struct ServedModel {
  engine::Engine* engine = nullptr;
  tokenizer::Tokenizer tokenizer;
  std::string name;                     // the id /v1/models shows
  engine::SamplerParams sampling;       // the defaults of fields a request leaves out
  // A conversation as prompt tokens (the chat template, or plain text where the model has none). Throws
  // std::runtime_error (turned into a 400) when the template refuses the conversation.
  std::function<std::vector<int32_t>(const std::vector<ChatMessage>&)> chat_prompt;
  // A request that fills its context shifts it (keeping the first `keep` tokens) unless it says otherwise.
  bool context_shift = false;
  int keep = 0;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket and starts answering: /health says 503 until serve() is called. Returns the port.
  // Throws std::runtime_error when the address cannot be bound.
  int start();
  // Starts the engine thread: from now on requests run.
  void serve(ServedModel model);
  // Refuses new requests (503), lets running ones finish for up to `grace`, cancels the rest, then stops the HTTP
  // threads and the engine thread.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Job;
  void route();
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  void handle_completion(Endpoint endpoint, const std::string& body, httplib::Response& res);
  void stream_reply(const std::shared_ptr<Job>& job, httplib::Response& res);
  void whole_reply(const std::shared_ptr<Job>& job, httplib::Response& res);
  void engine_loop();
  void wake_engine();
  Metrics::Gauges gauges() const;

  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};

  std::unique_ptr<ServedModel> model_;  // set by serve()
  std::unique_ptr<engine::Scheduler> scheduler_;
  std::thread engine_thread_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool work_pending_ = false;
  std::atomic<bool> engine_stop_{false};
  std::mutex admission_mutex_;  // held while a request checks the queue's room and joins it
  std::atomic<int64_t> live_jobs_{0};
  std::atomic<uint64_t> next_id_{1};

  Metrics metrics_;
  mutable std::mutex gauges_mutex_;
  Metrics::Gauges gauges_;
};

}  // namespace tessera::server
