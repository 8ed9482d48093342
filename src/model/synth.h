// `synth`: random-weight `llama` models of real shapes, written straight to a quantized GGUF file.
//
// The file has the keys, tensor names and shapes llama.cpp's converter writes, so llama.cpp loads it too.
// Weights are ~N(0, 0.02) (a sum of four uniforms: cheap, and near enough to normal for benchmarking), norm
// weights ~1 + N(0, 0.1). Every tensor is produced inside the GGUF writer's per-tensor producer, row by row on
// several threads, so memory stays at one tensor's quantized bytes whatever the model size. Each row's random
// stream is seeded from (seed, tensor, row), so the file does not depend on the thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/ggml_type.h"
#include "gguf/gguf.h"

namespace tessera::model {

// The shapes of a real checkpoint (values from its config.json).
struct SynthPreset {
  std::string name;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int n_ff = 0;
  int n_vocab = 0;
  float rope_base = 10000;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
};

// tiny, tinyllama-1.1b, llama2-7b, llama3-8b, mistral-7b.
const std::vector<SynthPreset>& synth_presets();
// Throws std::invalid_argument "unknown preset 'x' (expected tiny, tinyllama-1.1b, ...)".
const SynthPreset& find_synth_preset(std::string_view name);

// Progress after each tensor is written.
struct SynthProgress {
  size_t tensor_index = 0;  // 0-based index of the tensor just written
  size_t n_tensors = 0;
  std::string name;
  GgmlType type = GgmlType::F32;
  uint64_t bytes_done = 0;   // tensor data bytes written so far, this tensor included
  uint64_t bytes_total = 0;  // all tensor data bytes
};

struct SynthOptions {
  SynthPreset preset;
  std::string type = "Q4_K_M";  // a llama-quantize type name: F32, F16, Q8_0, Q4_0, Q4_K_M, Q6_K, ...
  uint64_t seed = 1;
  // A GGUF whose tokenizer.* keys are copied; its vocabulary size replaces the preset's. Empty: a synthetic
  // SentencePiece vocabulary of the preset's size.
  std::string vocab_from;
  int n_threads = 0;  // 0: all hardware threads
  std::function<void(const SynthProgress&)> on_progress;
};

// Builds the writer: metadata now, tensors as producers that generate and quantize when written. `vocab_source`
// is the opened --vocab-from file (nullptr for a synthetic vocabulary); it is only read here.
gguf::Writer make_synth_writer(const SynthOptions& options, const gguf::File* vocab_source);

// Opens options.vocab_from if set and writes the model to `path`. Throws std::invalid_argument for a bad type or
// preset, gguf::FormatError for a vocabulary file without tokenizer.ggml.tokens, std::runtime_error on I/O.
void write_synth_model(const SynthOptions& options, const std::string& path);

// The synthetic SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then
// generated pieces ("▁a", "a", "▁b", ...) with descending scores. Fills tokens, scores and token types.
struct SynthVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};
SynthVocab make_synth_vocab(int n_vocab);

}  // namespace tessera::model
