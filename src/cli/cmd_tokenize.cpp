#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the tokenize command lands; it is listed so that the CLI's shape is visible from the start.
void add_tokenize_commands(CLI::App& root) {
  root.add_subcommand("tokenize", "(not built yet)")->callback([] { throw std::runtime_error("'tokenize' is not built yet"); });
}

}  // namespace tessera::cli
