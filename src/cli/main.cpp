// tessera: one binary, several subcommands. Exit codes: 0 success, 1 invalid input or runtime failure (one line
// on stderr), 2 usage error, 128 + N when ended by signal N (130 for Ctrl-C; `run` first reports what it made; see
// signals.h). `run` is the default subcommand: `tessera -m M.gguf -p "Hi"` means `tessera run ...`.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "cli/signals.h"
#include "cli/stdout_writer.h"

namespace {

std::vector<std::string> subcommand_names(CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) names.push_back(sub->get_name());
  return names;
}

// Levenshtein distance: insertions, deletions and substitutions of one byte each cost 1.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// `run` takes no positional arguments, so a first word that is neither an option nor a command is a mistyped
// command (or a stray argument): say so, with the nearest command, instead of parsing it as run's.
std::string unknown_command_message(std::string_view word, const std::vector<std::string>& names) {
  std::string nearest;
  size_t best = 3;  // suggest only within 2 edits
  for (const std::string& name : names) {
    if (const size_t d = edit_distance(word, name); d < best) {
      best = d;
      nearest = name;
    }
  }
  if (!nearest.empty()) return fmt::format("unknown command '{}'; did you mean '{}'?", word, nearest);
  return fmt::format("unknown command '{}'; the commands are {} (tessera --help)", word, fmt::join(names, ", "));
}

int run_command_line(int argc, char** argv) {
  CLI::App app{"Tessera runs Llama-family language models from GGUF files on the CPU and on NVIDIA GPUs.", "tessera"};
  app.set_version_flag("--version", "tessera 0.1.0");
  app.require_subcommand(1);
  tessera::cli::add_run_command(app);
  tessera::cli::add_inspect_command(app);
  tessera::cli::add_tokenize_commands(app);
  tessera::cli::add_logits_command(app);
  tessera::cli::add_quantize_command(app);
  tessera::cli::add_synth_command(app);
  tessera::cli::add_bench_command(app);

  std::vector<std::string> args(argv + 1, argv + argc);
  const bool asks_root = !args.empty() && (args[0] == "-h" || args[0] == "--help" || args[0] == "--version");
  const std::vector<std::string> names = subcommand_names(app);
  if (!args.empty() && !asks_root && std::find(names.begin(), names.end(), args[0]) == names.end()) {
    if (!args[0].starts_with("-")) {
      std::fprintf(stderr, "error: %s\n", unknown_command_message(args[0], names).c_str());
      return 2;
    }
    args.insert(args.begin(), "run");
  }
  std::vector<const char*> argv2 = {argv[0]};
  for (const std::string& a : args) argv2.push_back(a.c_str());

  try {
    app.parse(static_cast<int>(argv2.size()), argv2.data());
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  } catch (const tessera::cli::UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const tessera::cli::OutputError& e) {
    if (!e.broken_pipe()) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  tessera::cli::reserve_standard_streams();
  tessera::cli::install_signal_handlers();
  const int rc = run_command_line(argc, argv);
  // The last buffered output (and help text, which CLI11 writes through std::cout into the same buffer).
  try {
    tessera::cli::flush_stdout();
  } catch (const tessera::cli::OutputError& e) {
    if (rc != 0) return rc;  // the failure that ended the command is already reported
    if (!e.broken_pipe()) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return rc;
}
