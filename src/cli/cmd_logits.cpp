// tessera logits: evaluate a prompt in one batch and write the logits of every position as float32,
// row-major [n_tokens][n_vocab] (the layout of the fixtures' .logits.f32 files).
#include <cstdio>
#include <fstream>
#include <memory>

#include "cli/commands.h"
#include "cli/engine_options.h"
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
  LoadedModel loaded = load_model(o.engine, true);
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(*loaded.file);
  const std::vector<int32_t> tokens = tok.encode(o.prompt, !o.no_bos, o.parse_special);
  if (tokens.empty()) throw UsageError("the prompt gives no tokens");
  if (static_cast<int64_t>(tokens.size()) > loaded.engine->n_ctx()) {
    throw std::runtime_error("the prompt has " + std::to_string(tokens.size()) + " tokens but the context holds " +
                             std::to_string(loaded.engine->n_ctx()) + "; raise --ctx-size");
  }
  const int32_t seq = loaded.engine->new_sequence();
  const std::span<const float> logits = loaded.engine->eval(seq, tokens, true);

  const std::string tmp = o.out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write '" + tmp + "'");
    f.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size_bytes()));
    if (!f) throw std::runtime_error("failed writing '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), o.out.c_str()) != 0) throw std::runtime_error("cannot rename to '" + o.out + "'");
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
