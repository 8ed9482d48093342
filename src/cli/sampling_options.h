// The sampling options shared by run, chat and serve (for serve they are the defaults of what a request leaves
// out): temperature, top-k/p, min-p, penalties and the seed.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "engine/sampler.h"

namespace tessera::cli {

struct SamplingCliOptions {
  engine::SamplerParams params;
  std::string seed;  // as given; see parse_seed

  void add_to(CLI::App* app);
  // The parameters with the seed drawn or parsed; throws UsageError for a bad seed or value.
  engine::SamplerParams to_params() const;
};

// --seed: any unsigned 64-bit value; -1 (llama.cpp's spelling) or none for a random one. Throws UsageError.
uint64_t parse_seed(const std::string& text);

}  // namespace tessera::cli
