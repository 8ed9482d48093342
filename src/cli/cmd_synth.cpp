#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the synth command lands; it is listed so that the CLI's shape is visible from the start.
void add_synth_command(CLI::App& root) {
  root.add_subcommand("synth", "(not built yet)")->callback([] { throw std::runtime_error("'synth' is not built yet"); });
}

}  // namespace tessera::cli
