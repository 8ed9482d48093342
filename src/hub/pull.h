// Fetching models from the Hugging Face Hub into the local store: the one entry point frontends use.
#pragma once

#include <filesystem>
#include <string>

#include "hub/reference.h"

namespace tessera::hub {

struct Options {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT names a mirror
  std::string token;                                // sent as a Bearer token; "" for none
  std::filesystem::path store_root;                 // "" for default_store_root()
  bool quiet = false;                               // no progress on stderr
  int attempts = 4;  // tries per download when the connection drops; each resumes where the last stopped

  // From the environment: HF_ENDPOINT, and HF_TOKEN unless `token` is given.
  static Options from_environment(const std::string& token = "");
};

struct PullResult {
  std::filesystem::path path;  // the model in the store
  std::string name;            // OWNER/NAME/FILE.gguf
  bool downloaded = false;     // false when the store already held this version
};

// Asks the Hub which file `ref` names and its sha256, and downloads it unless the store holds that version:
// into FILE.gguf.part (resuming one left by an earlier run), verified against the sha256, validated as GGUF,
// then renamed into place. Throws std::runtime_error with one line for every failure; the part file is kept
// for a later resume except when its content is wrong (checksum mismatch, not GGUF).
PullResult pull(const ModelRef& ref, const Options& options);

// What `-m` means: an existing local path is returned unchanged; a Hub reference ("OWNER/NAME:QUANT",
// "hf://...") is served from the store when it holds it, else pulled first; anything else is returned unchanged
// (the caller reports it missing).
std::string resolve_model_path(const std::string& model_arg, const Options& options);

}  // namespace tessera::hub
