// tessera: one binary, several subcommands. Exit codes: 0 success, 1 invalid input or runtime failure (one line
// on stderr), 2 usage error. `run` is the default subcommand: `tessera -m M.gguf -p "Hi"` means `tessera run ...`.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"

namespace {

bool is_subcommand(CLI::App& app, std::string_view word) {
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->get_name() == word) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
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
  tessera::cli::add_template_command(app);

  std::vector<std::string> args(argv + 1, argv + argc);
  const bool asks_root = !args.empty() && (args[0] == "-h" || args[0] == "--help" || args[0] == "--version");
  if (!args.empty() && !asks_root && !is_subcommand(app, args[0])) args.insert(args.begin(), "run");
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
