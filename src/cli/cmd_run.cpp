// tessera run: generate text from a prompt, streamed to stdout as it is produced; load progress and a stats line
// go to stderr. `--output json` prints one JSON document instead.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/engine_options.h"
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
  engine::SamplerParams sampling;
  std::string seed;  // as given; see parse_seed
  bool ignore_eos = false;
  bool no_bos = false;
  bool parse_special = false;
  std::string output = "text";
};

// --seed: any unsigned 64-bit value; -1 (llama.cpp's spelling) or no --seed for a random one.
uint64_t parse_seed(const std::string& text) {
  if (text.empty() || text == "-1") {
    return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  uint64_t seed = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw UsageError(fmt::format("--seed must be an integer from 0 to {}, or -1 for a random seed (got '{}')",
                                 std::numeric_limits<uint64_t>::max(), text));
  }
  return seed;
}

int run(const RunOptions& o) {
  if (o.max_tokens <= 0) throw UsageError("--max-tokens must be at least 1");
  if (o.output != "text" && o.output != "json") throw UsageError("--output must be text or json");
  if (o.prompt_given == o.prompt_file_given) throw UsageError("give exactly one of --prompt and --file");
  engine::SamplerParams sampling = o.sampling;
  sampling.seed = parse_seed(o.seed);
  try {
    sampling.validate();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
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
  o->engine.add_to(cmd);
  const CLI::Option* prompt = cmd->add_option("-p,--prompt", o->prompt, "Prompt text");
  const CLI::Option* prompt_file = cmd->add_option(
      "-f,--file", o->prompt_file,
      fmt::format("Read the prompt from a file (at most {} MiB; - or a pipe: standard input, at most {} MiB)",
                  io::kMaxTextFileBytes >> 20, io::kMaxTextStreamBytes >> 20));
  cmd->add_option("-n,--max-tokens", o->max_tokens, "Most tokens to generate")->capture_default_str();
  cmd->add_option("--temp", o->sampling.temperature, "Temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "Keep the smallest set with this probability mass; 1 = off")
      ->capture_default_str();
  cmd->add_option("--min-p", o->sampling.min_p, "Drop tokens less likely than min-p x the best; 0 = off")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", o->sampling.repeat_penalty, "Penalise repeating recent tokens; 1 = off")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", o->sampling.penalty_last_n, "Recent tokens the penalties look at")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", o->sampling.frequency_penalty, "Subtract count x this from a logit")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", o->sampling.presence_penalty, "Subtract this from seen tokens' logits")
      ->capture_default_str();
  cmd->add_option("-s,--seed", o->seed,
                  "Random seed from 0 to 2^64-1; -1 or none: random. The same seed gives the same output");
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
