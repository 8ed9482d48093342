// The `tessera` subcommands. Each lives in its own cmd_<name>.cpp and adds itself to the root app; its callback
// runs the command and reports failure by throwing (see main.cpp for how errors become exit codes).
#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>

namespace tessera::cli {

// A mistake in how the command was called (exit 2), found after parsing, e.g. --max-tokens 0.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void add_run_command(CLI::App& root);
void add_inspect_command(CLI::App& root);
void add_tokenize_commands(CLI::App& root);  // tokenize, detokenize
void add_logits_command(CLI::App& root);
void add_quantize_command(CLI::App& root);
void add_synth_command(CLI::App& root);
void add_bench_command(CLI::App& root);
void add_bench_serve_command(CLI::App& root);
void add_hub_commands(CLI::App& root);  // pull, list, rm
void add_template_command(CLI::App& root);
void add_serve_command(CLI::App& root);
void add_chat_command(CLI::App& root);

}  // namespace tessera::cli
