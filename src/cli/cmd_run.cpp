// tessera run: generate text from a prompt, streamed to stdout as it is produced; load progress and a stats line
// go to stderr. `--output json` prints one JSON document instead.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "cli/sampling_options.h"
#include "cli/signals.h"
#include "cli/stdout_writer.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "io/input_file.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

struct RunOptions {
  EngineCliOptions engine;
  std::string prompt;
  std::string prompt_file;
  bool prompt_given = false;  // -p "" is an empty prompt, not a missing one
  bool prompt_file_given = false;
  int max_tokens = 128;
  SamplingCliOptions sampling;
  bool ignore_eos = false;
  bool no_bos = false;
  bool parse_special = false;
  std::string output = "text";
};

int run(const RunOptions& o) {
  if (o.max_tokens <= 0) throw UsageError("--max-tokens must be at least 1");
  if (o.output != "text" && o.output != "json") throw UsageError("--output must be text or json");
  if (o.prompt_given == o.prompt_file_given) throw UsageError("give exactly one of --prompt and --file");
  const engine::SamplerParams sampling = o.sampling.to_params();
  const std::string prompt = o.prompt_given ? o.prompt : io::read_text_input(o.prompt_file, "prompt file");

  const bool json = o.output == "json";
  // From here on the first Ctrl-C stops generation at the current token and the result so far is reported.
  const InterruptScope interrupt_scope;
  LoadedModel loaded = load_model(o.engine, json);
  const tokenizer::Tokenizer tok = load_tokenizer(*loaded.file);

  engine::RequestOptions request_options;
  request_options.prompt = tok.encode(prompt, !o.no_bos, o.parse_special);
  if (request_options.prompt.empty()) {
    throw UsageError("the prompt gives no tokens (it is empty and no BOS token is added)");
  }
  request_options.max_tokens = o.max_tokens;
  request_options.sampling = sampling;
  request_options.ignore_eos = o.ignore_eos;
  o.engine.apply_to(request_options);
  const std::vector<int32_t> prompt_tokens = request_options.prompt;
  // A write that fails stops generation: nothing is produced that cannot be delivered.
  std::optional<OutputError> write_error;
  auto request = std::make_shared<engine::Request>(
      std::move(request_options), tok, [&](const engine::Request& r, std::string_view piece, auto) {
        if (json || write_error) return;
        try {
          write_stdout(piece);
          flush_stdout();
        } catch (const OutputError& e) {
          write_error = e;
          const_cast<engine::Request&>(r).cancel();
        }
      });
  engine::Scheduler scheduler(*loaded.engine, {1, loaded.engine->n_batch()});
  scheduler.add(request);
  while (scheduler.step()) {
    if (interrupt_flag()) request->cancel();
  }
  if (write_error) throw *write_error;
  if (request->finish_reason() == engine::FinishReason::Error) throw std::runtime_error(request->error());
  const bool interrupted = request->finish_reason() == engine::FinishReason::Cancelled;
  const engine::RequestTimings& timings = request->timings();

  const std::vector<int32_t>& generated = request->generated();
  // The first token is sampled from the prompt's logits, so generation speed counts the tokens after it.
  const double prompt_tps = prompt_tokens.size() / std::max(timings.prompt_seconds, 1e-9);
  const double gen_tps = (generated.size() > 1 ? generated.size() - 1 : 0) / std::max(timings.generation_seconds, 1e-9);
  const std::string_view stop = interrupted ? "interrupted" : engine::finish_reason_name(request->finish_reason());
  if (json) {
    nlohmann::json doc;
    doc["prompt_tokens"] = prompt_tokens;
    doc["generated_tokens"] = generated;
    doc["text"] = request->text();
    doc["stop_reason"] = stop;
    doc["kv_cache_bytes"] = loaded.engine->kv_cache_bytes();
    doc["context_shifts"] = timings.context_shifts;
    doc["timings"] = {{"prompt_tokens", prompt_tokens.size()},
                      {"prompt_seconds", timings.prompt_seconds},
                      {"prompt_tokens_per_s", prompt_tps},
                      {"generated_tokens", generated.size()},
                      {"generation_seconds", timings.generation_seconds},
                      {"generation_tokens_per_s", gen_tps},
                      {"time_to_first_token_s", timings.first_token_seconds}};
    write_stdout(doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    flush_stdout();
  } else {
    write_stdout("\n");
    flush_stdout();
    if (request->finish_reason() == engine::FinishReason::ContextFull) {
      std::fprintf(stderr, "stopped: the context (%d tokens) is full\n", loaded.engine->n_ctx());
    }
    if (timings.context_shifts > 0) {
      std::fprintf(stderr, "context shifts: %d (the context is %d tokens)\n", timings.context_shifts,
                   loaded.engine->n_ctx());
    }
    std::fprintf(stderr, "%s",
                 fmt::format("prompt: {} tokens, {:.1f} t/s | generated: {} tokens, {:.1f} t/s | first token: {:.0f} "
                             "ms | stop: {}\n",
                             prompt_tokens.size(), prompt_tps, generated.size(), gen_tps,
                             timings.first_token_seconds * 1000, stop)
                     .c_str());
  }
  return interrupted ? 130 : 0;
}

}  // namespace

void add_run_command(CLI::App& root) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = root.add_subcommand(
      "run", "Generate text from a prompt (the default command: `tessera -m M.gguf -p TEXT` runs it)");
  o->engine.add_to(cmd, {.generation = true});
  const CLI::Option* prompt = cmd->add_option("-p,--prompt", o->prompt, "Prompt text");
  const CLI::Option* prompt_file = cmd->add_option(
      "-f,--file", o->prompt_file,
      fmt::format("Read the prompt from a file (at most {} MiB; - or a pipe: standard input, at most {} MiB)",
                  io::kMaxTextFileBytes >> 20, io::kMaxTextStreamBytes >> 20));
  cmd->add_option("-n,--max-tokens", o->max_tokens, "Most tokens to generate")->capture_default_str();
  o->sampling.add_to(cmd);
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-generation tokens");
  cmd->add_flag("--no-bos", o->no_bos, "Do not add the BOS token to the prompt");
  cmd->add_flag("--parse-special", o->parse_special, "Read special-token text such as <s> in the prompt as tokens");
  cmd->add_option("--output", o->output, "text (streamed) or json (one document at the end)")->capture_default_str();
  cmd->callback([o, prompt, prompt_file] {
    o->prompt_given = prompt->count() > 0;
    o->prompt_file_given = prompt_file->count() > 0;
    if (const int rc = run(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tessera::cli
