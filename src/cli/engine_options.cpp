#include "cli/engine_options.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "hub/pull.h"

namespace tessera::cli {

void EngineCliOptions::add_to(CLI::App* app, Fields fields) {
  CLI::Option* model_option =
      app->add_option("-m,--model", model, "GGUF model file, or a Hub model: OWNER/NAME:QUANT or hf://OWNER/NAME/FILE.gguf");
  if (fields.model_required) model_option->required();
  app->add_option("--token", token, "Hugging Face token for gated repositories (default: $HF_TOKEN)");
  app->add_option("--backend", backend, "Where to compute: cpu, cuda, or hybrid (alias hybrid-f32)")
      ->capture_default_str();
  app->add_option("-t,--threads", threads, "CPU threads (default: the number of physical cores)");
  if (fields.context_and_batch) {
    app->add_option("-c,--ctx-size", ctx_size,
                    "KV cache size in tokens (default: the model's context length, at most 4096)");
    app->add_option("-b,--batch-size", batch_size, "Most prompt tokens in one forward call")->capture_default_str();
  }
  if (fields.kv_pool) {
    app->add_option("--kv-size", kv_size,
                    "KV cache slots shared by all sequences (default: 4 x --ctx-size); finished conversations stay "
                    "in it for the prefix cache until the slots are needed");
  }
  app->add_option("--cache-type", cache_type, "KV cache type of keys and values: f16, f32, bf16, q8_0 or q4_0")
      ->capture_default_str();
  app->add_option("--cache-type-k", cache_type_k, "KV cache type of the keys (default: --cache-type)");
  app->add_option("--cache-type-v", cache_type_v, "KV cache type of the values (default: --cache-type)");
  gpu_layers_option_ = app->add_option("--gpu-layers", gpu_layers,
                                       "With --backend hybrid only: layers to put on the GPU (default: all)");
  app->add_option("--kv-window", kv_window,
                  "Sliding-window attention for any model, an approximation unless it was trained so: each token "
                  "sees the N latest positions and the first --keep (attention sinks); the cache holds only those");
  app->add_option("--keep", keep, "Tokens at the start that --kv-window keeps visible and a context shift keeps")
      ->capture_default_str();
  if (fields.generation) {
    app->add_flag("--context-shift", context_shift,
                  "When the context is full, drop the oldest half of the tokens after --keep and go on");
  }
}

int capped_thread_count(int requested, std::string_view option) {
  if (requested < 0) throw UsageError(fmt::format("{} must not be negative (got {})", option, requested));
  const int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int most = kMaxThreadsPerCpu * cpus;
  if (requested <= most) return requested;
  std::fprintf(stderr, "%s",
               fmt::format("warning: {} {} is more than {} x the {} logical CPUs; using {}\n", option, requested,
                           kMaxThreadsPerCpu, cpus, most)
                   .c_str());
  return most;
}

namespace {

KvFormat parse_cache_type(const std::string& option, const std::string& name) {
  const std::optional<KvFormat> format = parse_kv_format(name);
  if (!format) throw UsageError(option + " must be f16, f32, bf16, q8_0 or q4_0, not '" + name + "'");
  return *format;
}

}  // namespace

engine::EngineOptions EngineCliOptions::to_engine_options() const {
  engine::EngineOptions o;
  try {
    o.backend = engine::canonical_backend_name(backend);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  if (ctx_size < 0) throw UsageError("--ctx-size must be positive");
  if (batch_size <= 0) throw UsageError("--batch-size must be positive");
  const KvFormat both = parse_cache_type("--cache-type", cache_type);
  o.kv_format.k = cache_type_k.empty() ? both : parse_cache_type("--cache-type-k", cache_type_k);
  o.kv_format.v = cache_type_v.empty() ? both : parse_cache_type("--cache-type-v", cache_type_v);
  if (kv_window < 0) throw UsageError("--kv-window must not be negative");
  if (keep < 0) throw UsageError("--keep must not be negative");
  o.kv_window = kv_window;
  o.n_sink = keep;
  if (gpu_layers_option_ && gpu_layers_option_->count() > 0) {
    if (o.backend != "hybrid") {
      throw UsageError("--gpu-layers applies to --backend hybrid only (cpu runs every layer on the CPU, cuda every "
                       "layer on the GPU)");
    }
    if (gpu_layers < 0) throw UsageError(fmt::format("--gpu-layers must not be negative (got {})", gpu_layers));
  }
  o.n_threads = capped_thread_count(threads, "--threads");
  o.n_ctx = ctx_size;
  o.n_batch = batch_size;
  if (kv_size < 0) throw UsageError(fmt::format("--kv-size must not be negative (got {})", kv_size));
  o.n_kv_tokens = kv_size;
  o.kv_sequences = kv_sequences;
  o.gpu_layers = gpu_layers;
  return o;
}

void EngineCliOptions::apply_to(engine::RequestOptions& request) const {
  request.context_shift = context_shift;
  request.keep = keep;
}

namespace {

// Reads every page of the tensor data once, so that loading shows progress and the first token is not slowed
// by page faults.
void read_in_with_progress(const gguf::File& file, bool quiet) {
  const std::span<const uint8_t> bytes = file.bytes();
  const bool tty = isatty(STDERR_FILENO) != 0;
  constexpr size_t kChunk = size_t{64} << 20;
  constexpr size_t kPage = 4096;
  volatile uint8_t sink = 0;
  int last_percent = -1;
  for (size_t off = 0; off < bytes.size(); off += kChunk) {
    const size_t end = std::min(bytes.size(), off + kChunk);
    for (size_t p = off; p < end; p += kPage) sink = sink + bytes[p];
    const int percent = static_cast<int>(100.0 * static_cast<double>(end) / static_cast<double>(bytes.size()));
    if (!quiet && tty && percent != last_percent) {
      const int filled = percent / 5;
      std::fprintf(stderr, "\rloading [%s%s] %3d%%", std::string(filled, '#').c_str(),
                   std::string(20 - filled, ' ').c_str(), percent);
      last_percent = percent;
    }
  }
  if (!quiet && tty) std::fputc('\n', stderr);
}

}  // namespace

LoadedModel load_model(const EngineCliOptions& options, bool quiet) {
  const engine::EngineOptions eo = options.to_engine_options();
  const std::string path = hub::resolve_model_path(options.model, hub::Options::from_environment(options.token));
  if (!std::filesystem::exists(path)) throw std::runtime_error("model file '" + path + "' not found");
  LoadedModel loaded;
  loaded.file = std::make_unique<gguf::File>(gguf::File::open(path));
  read_in_with_progress(*loaded.file, quiet);
  loaded.engine = std::make_unique<engine::Engine>(*loaded.file, eo);
  for (const std::string& notice : loaded.engine->notices()) std::fprintf(stderr, "%s\n", notice.c_str());
  if (const int n_ctx_train = loaded.engine->model().config.n_ctx_train; eo.n_ctx > n_ctx_train) {
    std::fprintf(stderr, "%s",
                 fmt::format("warning: --ctx-size {} is more than the {} tokens the model was trained on; text "
                             "beyond them is likely to degrade\n",
                             eo.n_ctx, n_ctx_train)
                     .c_str());
  }
  if (!quiet) {
    const auto& c = loaded.engine->model().config;
    std::fprintf(stderr, "%s", fmt::format("model: {} layers, {} embd, {} heads ({} KV), vocab {}, {:.1f} MiB of weights; "
                                          "backend {}; KV cache {} tokens {} = {:.1f} MiB\n",
                                          c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_vocab,
                                          loaded.engine->model().weight_bytes() / 1048576.0,
                                          loaded.engine->backend().name(), loaded.engine->kv().n_slots(),
                                          kv_formats_name(eo.kv_format), loaded.engine->kv_cache_bytes() / 1048576.0)
                                  .c_str());
  }
  return loaded;
}

tokenizer::Tokenizer load_tokenizer(const gguf::File& file) {
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(file);
  for (const std::string& warning : tok.warnings()) std::fprintf(stderr, "warning: %s\n", warning.c_str());
  return tok;
}

}  // namespace tessera::cli
