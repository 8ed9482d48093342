// Options shared by every command that loads a model into an engine (run, logits, bench).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/request.h"
#include "gguf/gguf.h"

namespace tessera::cli {

struct EngineCliOptions {
  std::string model;
  std::string backend = "cpu";
  int threads = 0;
  int ctx_size = 0;
  int batch_size = 512;
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
    bool generation = false;
  };
  void add_to(CLI::App* app, Fields fields);
  void add_to(CLI::App* app) { add_to(app, Fields{}); }
  engine::EngineOptions to_engine_options() const;  // throws UsageError on bad values
  // The context-shift options of a request.
  void apply_to(engine::RequestOptions& request) const;
};

// A model file mapped and its pages read in with a progress bar on stderr, then an engine over it. The file
// outlives the engine (the engine's weights point into it).
struct LoadedModel {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<engine::Engine> engine;
};
LoadedModel load_model(const EngineCliOptions& options, bool quiet = false);

}  // namespace tessera::cli
