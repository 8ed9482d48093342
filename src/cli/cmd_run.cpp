// tessera run: generate text from a prompt, streamed to stdout as it is produced; load progress and a stats line
// go to stderr. `--output json` prints one JSON document instead.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

struct RunOptions {
  EngineCliOptions engine;
  std::string prompt;
  std::string prompt_file;
  int max_tokens = 128;
  engine::SamplerParams sampling;
  int64_t seed = -1;
  bool ignore_eos = false;
  bool no_bos = false;
  bool parse_special = false;
  std::string output = "text";
};

int run(const RunOptions& o) {
  if (o.max_tokens <= 0) throw UsageError("--max-tokens must be at least 1");
  if (o.output != "text" && o.output != "json") throw UsageError("--output must be text or json");
  if (o.prompt.empty() == o.prompt_file.empty()) throw UsageError("give exactly one of --prompt and --file");
  engine::SamplerParams sampling = o.sampling;
  sampling.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed)
                              : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  try {
    sampling.validate();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  std::string prompt = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read prompt file '" + o.prompt_file + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    prompt = ss.str();
  }

  const bool json = o.output == "json";
  LoadedModel loaded = load_model(o.engine, json);
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(*loaded.file);

  engine::RequestOptions request_options;
  request_options.prompt = tok.encode(prompt, !o.no_bos, o.parse_special);
  request_options.max_tokens = o.max_tokens;
  request_options.sampling = sampling;
  request_options.ignore_eos = o.ignore_eos;
  o.engine.apply_to(request_options);
  const std::vector<int32_t> prompt_tokens = request_options.prompt;
  auto request = std::make_shared<engine::Request>(
      std::move(request_options), tok, [&](const engine::Request&, std::string_view piece, auto) {
        if (!json) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        }
      });
  engine::Scheduler scheduler(*loaded.engine, {1, loaded.engine->n_batch()});
  scheduler.add(request);
  while (scheduler.step()) {
  }
  if (request->finish_reason() == engine::FinishReason::Error) throw std::runtime_error(request->error());
  const engine::RequestTimings& timings = request->timings();

  const std::vector<int32_t>& generated = request->generated();
  // The first token is sampled from the prompt's logits, so generation speed counts the tokens after it.
  const double prompt_tps = prompt_tokens.size() / std::max(timings.prompt_seconds, 1e-9);
  const double gen_tps = (generated.size() > 1 ? generated.size() - 1 : 0) / std::max(timings.generation_seconds, 1e-9);
  const std::string_view stop = engine::finish_reason_name(request->finish_reason());
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
    std::printf("%s\n", doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
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
  return 0;
}

}  // namespace

void add_run_command(CLI::App& root) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = root.add_subcommand(
      "run", "Generate text from a prompt (the default command: `tessera -m M.gguf -p TEXT` runs it)");
  o->engine.add_to(cmd, {.generation = true});
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text");
  cmd->add_option("-f,--file", o->prompt_file, "Read the prompt from a file");
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
  cmd->add_option("-s,--seed", o->seed, "Random seed (default: random); the same seed gives the same output");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-generation tokens");
  cmd->add_flag("--no-bos", o->no_bos, "Do not add the BOS token to the prompt");
  cmd->add_flag("--parse-special", o->parse_special, "Read special-token text such as <s> in the prompt as tokens");
  cmd->add_option("--output", o->output, "text (streamed) or json (one document at the end)")->capture_default_str();
  cmd->callback([o] {
    if (const int rc = run(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tessera::cli
