// tessera logits: evaluate a prompt in one batch and write the logits of every position as float32,
// row-major [n_tokens][n_vocab] (the layout of the fixtures' .logits.f32 files).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "io/output_file.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

struct LogitsOptions {
  EngineCliOptions engine;
  std::string prompt;
  std::string out;
  bool no_bos = false;
  bool parse_special = false;
};

int run(const LogitsOptions& o) {
  io::check_output_path(o.out);
  LoadedModel loaded = load_model(o.engine, true);
  const tokenizer::Tokenizer tok = load_tokenizer(*loaded.file);
  const std::vector<int32_t> tokens = tok.encode(o.prompt, !o.no_bos, o.parse_special);
  if (tokens.empty()) throw UsageError("the prompt gives no tokens");
  if (static_cast<int64_t>(tokens.size()) > loaded.engine->n_ctx()) {
    throw std::runtime_error("the prompt has " + std::to_string(tokens.size()) + " tokens but the context holds " +
                             std::to_string(loaded.engine->n_ctx()) + "; raise --ctx-size");
  }
  const int32_t seq = loaded.engine->new_sequence();
  const std::span<const float> logits = loaded.engine->eval(seq, tokens, true);

  io::OutputFile out(o.out);
  out.write(logits.data(), logits.size_bytes());
  out.commit();
  std::fprintf(stderr, "wrote %zu x %d logits to %s\n", tokens.size(), loaded.engine->n_vocab(), o.out.c_str());
  return 0;
}

}  // namespace

void add_logits_command(CLI::App& root) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* cmd = root.add_subcommand("logits", "Write the logits of every prompt position as float32 [n_tokens][n_vocab]");
  o->engine.add_to(cmd);
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("--out", o->out, "Output file")->required();
  cmd->add_flag("--no-bos", o->no_bos, "Do not add the BOS token");
  cmd->add_flag("--parse-special", o->parse_special, "Read special-token text such as <s> as tokens");
  cmd->callback([o] {
    if (const int rc = run(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tessera::cli
