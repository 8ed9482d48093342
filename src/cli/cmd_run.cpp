#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the run command lands; it is listed so that the CLI's shape is visible from the start.
void add_run_command(CLI::App& root) {
  root.add_subcommand("run", "(not built yet)")->callback([] { throw std::runtime_error("'run' is not built yet"); });
}

}  // namespace tessera::cli
