#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the logits command lands; it is listed so that the CLI's shape is visible from the start.
void add_logits_command(CLI::App& root) {
  root.add_subcommand("logits", "(not built yet)")->callback([] { throw std::runtime_error("'logits' is not built yet"); });
}

}  // namespace tessera::cli
