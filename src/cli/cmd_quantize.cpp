// `tessera quantize IN.gguf OUT.gguf TYPE`: rewrites a model with llama-quantize's per-tensor type mix.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "io/output_file.h"
#include "quant/quantize_model.h"

namespace tessera::cli {
namespace {

struct QuantizeArgs {
  std::string input;
  std::string output;
  std::string type;
  int threads = 0;
  bool allow_requantize = false;
};

// A one-line bar redrawn in place on a terminal; one line per tensor otherwise (logs stay readable).
void print_progress(const quant::QuantizeProgress& p, double seconds, bool terminal) {
  const double fraction = p.bytes_total ? static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 1.0;
  if (terminal) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth + 0.5);
    fmt::print(stderr, "\r[{}{}] {:5.1f}% {:4}/{} {:<32.32} {:>5} -> {:<5} {:6.1f} s", std::string(filled, '#'),
               std::string(kWidth - filled, '.'), 100.0 * fraction, p.tensor_index + 1, p.n_tensors, p.name,
               ggml_type_name(p.from), ggml_type_name(p.to), seconds);
    if (p.tensor_index + 1 == p.n_tensors) fmt::print(stderr, "\n");
  } else {
    fmt::print(stderr, "[{:4}/{}] {:<32} {:>5} -> {:<5} {:5.1f}% {:6.1f} s\n", p.tensor_index + 1, p.n_tensors, p.name,
               ggml_type_name(p.from), ggml_type_name(p.to), 100.0 * fraction, seconds);
  }
}

void run_quantize(const QuantizeArgs& args) {
  quant::ModelQuantType type;
  try {
    type = quant::parse_model_quant_type(args.type);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  const int threads = capped_thread_count(args.threads, "--threads");
  if (!std::filesystem::exists(args.input)) throw std::runtime_error("input file '" + args.input + "' not found");
  const std::string target = io::check_output_path(args.output);
  std::error_code ec;
  if (std::filesystem::equivalent(args.input, target, ec)) {
    throw UsageError("the output file must differ from the input file");
  }

  const bool terminal = isatty(fileno(stderr)) != 0;
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  fmt::print(stderr, "quantize: {} -> {} as {}\n", args.input, args.output, quant::model_quant_type_name(type));
  const quant::QuantizeResult result = quant::quantize_model(
      args.input, args.output, type, threads, args.allow_requantize,
      [&](const quant::QuantizeProgress& p) { print_progress(p, elapsed(), terminal); });
  for (const std::string& note : result.notes) fmt::print(stderr, "quantize: fallback: {}\n", note);
  fmt::print(stderr, "quantize: tensor data {:.2f} MiB -> {:.2f} MiB in {:.1f} s\n",
             static_cast<double>(result.input_bytes) / (1 << 20), static_cast<double>(result.output_bytes) / (1 << 20),
             elapsed());
}

}  // namespace

void add_quantize_command(CLI::App& root) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = root.add_subcommand("quantize", "Quantize a GGUF model with llama-quantize's type presets");
  cmd->add_option("input", args->input, "GGUF model to read")->required();
  cmd->add_option("output", args->output, "GGUF file to write")->required();
  cmd->add_option("type", args->type,
                  "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, "
                  "Q5_K_M or Q6_K")
      ->required();
  cmd->add_option("--threads", args->threads, "threads quantizing (default: all)");
  cmd->add_flag("--allow-requantize", args->allow_requantize, "accept an input whose weights are already quantized");
  cmd->callback([args] { run_quantize(*args); });
}

}  // namespace tessera::cli
