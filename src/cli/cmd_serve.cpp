// tessera serve: the OpenAI-compatible HTTP server (src/server) on a model, with the web chat page at /. It binds
// first, so /health answers 503 while the model loads, then prints `listening on http://HOST:PORT` once requests
// can run. SIGINT or SIGTERM: refuse new requests, let running ones finish for a few seconds, exit 0.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>

#include "cli/chat_prompt.h"
#include "cli/commands.h"
#include "cli/engine_options.h"
#include "cli/sampling_options.h"
#include "cli/signals.h"
#include "cli/stdout_writer.h"
#include "server/server.h"

namespace tessera::cli {
namespace {

constexpr int kDefaultKvSequences = 4;  // the default cache holds four full contexts: room to batch and to cache
constexpr auto kShutdownGrace = std::chrono::seconds(5);

struct ServeOptions {
  EngineCliOptions engine;
  SamplingCliOptions sampling;
  ChatTemplateOptions chat_template;
  server::ServerOptions server;
  std::string alias;
};

int serve(ServeOptions& o) {
  if (o.server.port < 0 || o.server.port > 65535) throw UsageError(fmt::format("--port must be in [0, 65535]"));
  if (o.server.max_sequences < 1) throw UsageError("--max-sequences must be at least 1");
  if (o.server.max_queue < 0) throw UsageError("--max-queue must not be negative");
  const engine::SamplerParams sampling = o.sampling.to_params();
  if (o.engine.kv_size == 0) o.engine.kv_sequences = kDefaultKvSequences;
  o.server.max_step_tokens = o.engine.batch_size;

  const InterruptScope interrupt_scope(InterruptScope::Signals::InterruptOrTerminate);
  server::Server server(o.server);
  const int port = server.start();
  LoadedModel loaded = load_model(o.engine);
  const tokenizer::Tokenizer tokenizer = load_tokenizer(*loaded.file);
  const ChatPrompt chat_prompt = make_chat_prompt(o.chat_template, *loaded.file, tokenizer, "\n");
  if (!chat_prompt.has_template()) {
    std::fprintf(stderr, "chat: the model has no chat template; chat requests join the messages as plain text\n");
  }

  server.serve({loaded.engine.get(), tokenizer,
                !o.alias.empty() ? o.alias : std::filesystem::path(o.engine.model).filename().string(), sampling,
                [chat_prompt](const std::vector<server::ChatMessage>& messages) {
                  std::vector<chat::Message> conversation;
                  for (const server::ChatMessage& m : messages) conversation.push_back({m.role, m.content});
                  return chat_prompt.tokens(conversation, true);
                },
                o.engine.context_shift, o.engine.keep});
  print_stdout("listening on http://{}:{}\n", o.server.host, port);
  flush_stdout();
  while (!interrupted()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::fprintf(stderr, "shutting down: finishing running requests (at most %lld s)\n",
               static_cast<long long>(kShutdownGrace.count()));
  server.shutdown(kShutdownGrace);
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& root) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = root.add_subcommand(
      "serve", "Serve a model over an OpenAI-compatible HTTP API (continuous batching, prefix cache) and a web chat page");
  o->engine.add_to(cmd, {.model_required = true, .context_and_batch = true, .kv_pool = true, .generation = true});
  o->sampling.add_to(cmd);
  o->chat_template.add_to(cmd);
  cmd->add_option("--host", o->server.host, "Address to listen on (another than 127.0.0.1 exposes the server)")
      ->capture_default_str();
  cmd->add_option("--port", o->server.port, "Port to listen on (0: any free port)")->capture_default_str();
  cmd->add_option("--api-key", o->server.api_key, "Require 'Authorization: Bearer KEY' on the API");
  cmd->add_option("--max-sequences", o->server.max_sequences, "Requests generating at once")->capture_default_str();
  cmd->add_option("--max-queue", o->server.max_queue, "Requests waiting beyond those; more get 429")
      ->capture_default_str();
  cmd->add_option("--alias", o->alias, "Model name in /v1/models and replies (default: the file name)");
  cmd->callback([o] {
    if (const int rc = serve(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tessera::cli
