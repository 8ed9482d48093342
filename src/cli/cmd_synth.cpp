// `tessera synth`: a random-weight llama model of a real checkpoint's shapes, quantized as it is written.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "io/output_file.h"
#include "model/synth.h"
#include "quant/quantize_model.h"

namespace tessera::cli {
namespace {

struct SynthArgs {
  std::string preset;
  std::string type = "Q4_K_M";
  std::string output;
  uint64_t seed = 1;
  std::string vocab_from;
  int threads = 0;
};

void run_synth(const SynthArgs& args) {
  model::SynthOptions options;
  try {
    options.preset = model::find_synth_preset(args.preset);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  try {
    quant::parse_model_quant_type(args.type);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  const int threads = capped_thread_count(args.threads, "--threads");
  if (!args.vocab_from.empty() && !std::filesystem::exists(args.vocab_from)) {
    throw std::runtime_error("vocabulary file '" + args.vocab_from + "' not found");
  }
  io::check_output_path(args.output);
  options.type = args.type;
  options.seed = args.seed;
  options.vocab_from = args.vocab_from;
  options.n_threads = threads;

  const auto start = std::chrono::steady_clock::now();
  options.on_progress = [start](const model::SynthProgress& p) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "[{:4}/{}] {:<28} {:<5} {:6.1f}% {:7.1f} s\n", p.tensor_index + 1, p.n_tensors, p.name,
               ggml_type_name(p.type), 100.0 * static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total),
               seconds);
  };
  fmt::print(stderr, "synth: preset {} ({} hidden, {} layers, {} heads, {} KV heads, FFN {}), type {}, seed {}\n",
             options.preset.name, options.preset.n_embd, options.preset.n_layer, options.preset.n_head,
             options.preset.n_head_kv, options.preset.n_ff, options.type, options.seed);
  model::write_synth_model(options, args.output);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "synth: wrote {} ({} bytes) in {:.1f} s\n", args.output, std::filesystem::file_size(args.output),
             seconds);
}

}  // namespace

void add_synth_command(CLI::App& root) {
  auto args = std::make_shared<SynthArgs>();
  CLI::App* cmd = root.add_subcommand("synth", "Write a random-weight llama model of a real checkpoint's shapes");
  std::string presets;
  for (const model::SynthPreset& p : model::synth_presets()) presets += (presets.empty() ? "" : ", ") + p.name;
  cmd->add_option("--preset", args->preset, "shapes to use: " + presets)->required();
  cmd->add_option("--type", args->type, "llama-quantize type: F32, F16, Q8_0, Q4_0, Q4_K_M, Q6_K, ...")
      ->capture_default_str();
  cmd->add_option("-o,--output", args->output, "GGUF file to write")->required();
  cmd->add_option("--seed", args->seed, "random seed")->capture_default_str();
  cmd->add_option("--vocab-from", args->vocab_from,
                  "copy the tokenizer.* keys of this GGUF (its vocabulary size replaces the preset's)");
  cmd->add_option("-t,--threads", args->threads, "threads generating and quantizing (default: all)");
  cmd->callback([args] { run_synth(*args); });
}

}  // namespace tessera::cli
