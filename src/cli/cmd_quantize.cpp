#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the quantize command lands; it is listed so that the CLI's shape is visible from the start.
void add_quantize_command(CLI::App& root) {
  root.add_subcommand("quantize", "(not built yet)")->callback([] { throw std::runtime_error("'quantize' is not built yet"); });
}

}  // namespace tessera::cli
