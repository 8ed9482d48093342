#include "cli/commands.h"

namespace tessera::cli {

// Placeholder until the bench command lands; it is listed so that the CLI's shape is visible from the start.
void add_bench_command(CLI::App& root) {
  root.add_subcommand("bench", "(not built yet)")->callback([] { throw std::runtime_error("'bench' is not built yet"); });
}

}  // namespace tessera::cli
