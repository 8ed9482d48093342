// Options shared by every command that loads a model into an engine (run, logits, bench).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "engine/engine.h"
#include "engine/request.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

struct EngineCliOptions {
  std::string model;  // a GGUF path, or a Hub reference (OWNER/NAME:QUANT, hf://...) pulled into the store
  std::string token;  // Hugging Face token for gated repositories; "" for $HF_TOKEN
  std::string backend = "cpu";
  int threads = 0;
  int ctx_size = 0;
  int batch_size = 512;
  int kv_size = 0;        // KV cache slots for all sequences together; 0: kv_sequences x the context
  int kv_sequences = 1;
  std::string cache_type = "f16";
  std::string cache_type_k;  // empty: cache_type
  std::string cache_type_v;
  int gpu_layers = -1;
  int kv_window = 0;
  int keep = 0;  // attention sinks with --kv-window; the tokens a context shift keeps
  bool context_shift = false;

  // Which of the options a command takes: bench sizes the context and batch from its tests, and without a model
  // only probes the memory bandwidth; commands that generate (run, chat, serve) take --context-shift.
  struct Fields {
    bool model_required = true;
    bool context_and_batch = true;
    bool kv_pool = false;     // --kv-size: a cache shared by many sequences (serve)
    bool generation = false;  // --context-shift: commands that generate (run, chat, serve)
  };
  void add_to(CLI::App* app, Fields fields);
  void add_to(CLI::App* app) { add_to(app, Fields{}); }
  // Throws UsageError on bad values; warns on stderr when --threads is capped.
  engine::EngineOptions to_engine_options() const;
  // The context-shift options of a request.
  void apply_to(engine::RequestOptions& request) const;

 private:
  const CLI::Option* gpu_layers_option_ = nullptr;
};

// `requested` threads (0: the default), at most kMaxThreadsPerCpu x the logical CPUs; a request above that is
// capped with a warning on stderr naming `option`. Negative is a UsageError.
inline constexpr int kMaxThreadsPerCpu = 4;
int capped_thread_count(int requested, std::string_view option);

// A model file (a Hub reference is pulled first, src/hub) mapped and its pages read in with a progress bar on
// stderr, then an engine over it. The file
// outlives the engine (the engine's weights point into it).
struct LoadedModel {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<engine::Engine> engine;
};
// `quiet` leaves out the progress bar and the model line; warnings (a context longer than the model was trained
// for) are printed either way.
LoadedModel load_model(const EngineCliOptions& options, bool quiet = false);

// The file's tokenizer, with its warnings (special token ids it had to ignore) printed on stderr.
tokenizer::Tokenizer load_tokenizer(const gguf::File& file);

}  // namespace tessera::cli
