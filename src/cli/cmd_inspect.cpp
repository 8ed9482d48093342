#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the inspect command lands; it is listed so that the CLI's shape is visible from the start.
void add_inspect_command(CLI::App& root) {
  root.add_subcommand("inspect", "(not built yet)")->callback([] { throw std::runtime_error("'inspect' is not built yet"); });
}

}  // namespace tessera::cli
