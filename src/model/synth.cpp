#include "model/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "quant/quant.h"
#include "quant/quantize_model.h"

namespace tessera::model {
namespace {

// ---- random numbers ---------------------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// xoshiro256+: fast, and its high bits (the ones used here) are of good quality.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    for (uint64_t& s : s_) s = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }

 private:
  uint64_t s_[4];
};

// The random stream of one row of one tensor, independent of which thread produces it.
Xoshiro256 row_stream(uint64_t seed, uint64_t tensor_index, uint64_t row) {
  uint64_t s = seed;
  uint64_t key = splitmix64(s) ^ (tensor_index * 0x9e3779b97f4a7c15ULL);
  key = splitmix64(key) ^ row;
  return Xoshiro256(splitmix64(key));
}

// ~N(mean, sigma): the sum of the four 16-bit uniforms of one 64-bit draw (Irwin-Hall with n = 4) has variance
// 4 * 65536^2 / 12, so it is centred and scaled by sqrt(3) / 65536.
void fill_normal(Xoshiro256& rng, float mean, float sigma, float* out, int64_t n) {
  const float scale = sigma * 1.7320508f / 65536.0f;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = rng.next();
    const int64_t sum = static_cast<int64_t>(r & 0xffff) + static_cast<int64_t>((r >> 16) & 0xffff) +
                        static_cast<int64_t>((r >> 32) & 0xffff) + static_cast<int64_t>(r >> 48);
    out[i] = mean + static_cast<float>(sum - 131070) * scale;
  }
}

// ---- the tensors ------------------------------------------------------------------------------------------

constexpr float kWeightSigma = 0.02f;
constexpr float kNormSigma = 0.1f;

struct TensorPlan {
  std::string name;
  int64_t n_cols = 0;  // ne0
  int64_t n_rows = 1;  // ne1 (1 for a vector)
  bool is_vector = false;
  GgmlType type = GgmlType::F32;
};

std::vector<TensorPlan> plan_tensors(const SynthPreset& p, int n_vocab) {
  const int head_dim = p.n_embd / p.n_head;
  const int64_t kv_dim = static_cast<int64_t>(head_dim) * p.n_head_kv;
  std::vector<TensorPlan> plan;
  auto matrix = [&](std::string name, int64_t n_cols, int64_t n_rows) {
    plan.push_back({std::move(name), n_cols, n_rows, false, GgmlType::F32});
  };
  auto vector = [&](std::string name, int64_t n) { plan.push_back({std::move(name), n, 1, true, GgmlType::F32}); };
  matrix("token_embd.weight", p.n_embd, n_vocab);
  for (int il = 0; il < p.n_layer; ++il) {
    const std::string b = fmt::format("blk.{}.", il);
    vector(b + "attn_norm.weight", p.n_embd);
    matrix(b + "attn_q.weight", p.n_embd, p.n_embd);
    matrix(b + "attn_k.weight", p.n_embd, kv_dim);
    matrix(b + "attn_v.weight", p.n_embd, kv_dim);
    matrix(b + "attn_output.weight", p.n_embd, p.n_embd);
    vector(b + "ffn_norm.weight", p.n_embd);
    matrix(b + "ffn_gate.weight", p.n_embd, p.n_ff);
    matrix(b + "ffn_up.weight", p.n_embd, p.n_ff);
    matrix(b + "ffn_down.weight", p.n_ff, p.n_embd);
  }
  vector("output_norm.weight", p.n_embd);
  matrix("output.weight", p.n_embd, n_vocab);
  return plan;
}

// Generates rows [0, n_rows) of one tensor on `n_threads` threads, quantizing each row as soon as it exists, so
// the only float memory is one row per thread.
void produce_tensor(const TensorPlan& t, uint64_t seed, uint64_t tensor_index, int n_threads, std::span<uint8_t> out) {
  const size_t row_bytes = ggml_row_bytes(t.type, static_cast<uint64_t>(t.n_cols));
  if (out.size() != row_bytes * static_cast<size_t>(t.n_rows)) {
    throw std::logic_error(fmt::format("tensor '{}': writer asks for {} bytes, expected {}", t.name, out.size(),
                                       row_bytes * static_cast<size_t>(t.n_rows)));
  }
  const float mean = t.is_vector ? 1.0f : 0.0f;
  const float sigma = t.is_vector ? kNormSigma : kWeightSigma;
  constexpr int64_t kRowsPerTask = 8;
  std::atomic<int64_t> next_row{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&] {
    try {
      std::vector<float> row(static_cast<size_t>(t.n_cols));
      for (;;) {
        const int64_t begin = next_row.fetch_add(kRowsPerTask);
        if (begin >= t.n_rows) break;
        for (int64_t r = begin; r < std::min(t.n_rows, begin + kRowsPerTask); ++r) {
          Xoshiro256 rng = row_stream(seed, tensor_index, static_cast<uint64_t>(r));
          fill_normal(rng, mean, sigma, row.data(), t.n_cols);
          quant::quantize_row(t.type, row.data(), out.data() + static_cast<size_t>(r) * row_bytes, t.n_cols);
        }
      }
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next_row = t.n_rows;  // the others stop at their next task
    }
  };
  const int n_workers = static_cast<int>(std::min<int64_t>(n_threads, (t.n_rows + kRowsPerTask - 1) / kRowsPerTask));
  {
    std::vector<std::jthread> helpers;
    try {
      for (int i = 1; i < n_workers; ++i) helpers.emplace_back(work);
    } catch (const std::system_error& e) {
      next_row = t.n_rows;  // the started helpers stop at their next task
      throw std::runtime_error(fmt::format("cannot start thread {} of {}: {}; use fewer --threads or raise the "
                                           "process limit", helpers.size() + 2, n_workers, e.code().message()));
    }
    work();
  }
  if (failure) std::rethrow_exception(failure);
}

// ---- the synthetic vocabulary -----------------------------------------------------------------------------

constexpr int32_t kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeByte = 6;
constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

void copy_tokenizer_keys(const gguf::File& source, gguf::Writer& writer) {
  const std::vector<std::string>* tokens = source.get_string_array("tokenizer.ggml.tokens");
  if (!tokens || tokens->empty()) throw gguf::FormatError("vocabulary file has no 'tokenizer.ggml.tokens' array");
  for (const auto& [key, value] : source.metadata()) {
    if (key.starts_with("tokenizer.")) writer.set(key, value);
  }
}

std::string default_name(const SynthPreset& p) { return fmt::format("synth-{}", p.name); }

}  // namespace

const std::vector<SynthPreset>& synth_presets() {
  static const std::vector<SynthPreset> presets = {
      // name, n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, rope_base, n_ctx_train, rms_eps
      {"tiny", 256, 2, 4, 2, 768, 512, 10000.0f, 512, 1e-5f},
      {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, 10000.0f, 2048, 1e-5f},
      {"llama2-7b", 4096, 32, 32, 32, 11008, 32000, 10000.0f, 4096, 1e-5f},
      {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0f, 8192, 1e-5f},
      {"mistral-7b", 4096, 32, 32, 8, 14336, 32000, 10000.0f, 32768, 1e-5f},
  };
  return presets;
}

const SynthPreset& find_synth_preset(std::string_view name) {
  std::string names;
  for (const SynthPreset& p : synth_presets()) {
    if (p.name == name) return p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  throw std::invalid_argument(fmt::format("unknown preset '{}' (expected {})", name, names));
}

SynthVocab make_synth_vocab(int n_vocab) {
  constexpr int kFixed = 3 + 256;
  if (n_vocab < kFixed + 1) {
    throw std::invalid_argument(fmt::format("a synthetic vocabulary needs at least {} tokens (got {})", kFixed + 1, n_vocab));
  }
  SynthVocab v;
  v.tokens.reserve(n_vocab);
  auto add = [&](std::string text, float score, int32_t type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, kTypeUnknown);
  add("<s>", 0.0f, kTypeControl);
  add("</s>", 0.0f, kTypeControl);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0.0f, kTypeByte);

  // Pieces in short-lex order over lower-case words, each with and without a leading space, so every piece of
  // length k can be merged from pieces of length k - 1 that come before it. Earlier pieces score higher.
  const std::string letters = "abcdefghijklmnopqrstuvwxyz";
  auto add_piece = [&](std::string text) {
    if (static_cast<int>(v.tokens.size()) < n_vocab) add(std::move(text), -static_cast<float>(v.tokens.size() - kFixed), kTypeNormal);
  };
  add_piece(std::string(kSpace));
  for (char c : letters) add_piece(std::string(1, c));
  std::vector<std::string> words(letters.size());
  for (size_t i = 0; i < letters.size(); ++i) words[i] = std::string(1, letters[i]);
  for (const std::string& w : words) add_piece(std::string(kSpace) + w);
  while (static_cast<int>(v.tokens.size()) < n_vocab) {
    std::vector<std::string> longer;
    for (const std::string& w : words) {
      for (char c : letters) {
        if (static_cast<int>(v.tokens.size()) >= n_vocab) break;
        longer.push_back(w + c);
        add_piece(longer.back());
        add_piece(std::string(kSpace) + longer.back());
      }
    }
    words = std::move(longer);
  }
  return v;
}

gguf::Writer make_synth_writer(const SynthOptions& options, const gguf::File* vocab_source) {
  const SynthPreset& p = options.preset;
  if (p.n_embd <= 0 || p.n_layer <= 0 || p.n_head <= 0 || p.n_head_kv <= 0 || p.n_ff <= 0 ||
      p.n_embd % p.n_head != 0 || p.n_head % p.n_head_kv != 0) {
    throw std::invalid_argument(fmt::format("preset '{}' has inconsistent shapes", p.name));
  }
  const quant::ModelQuantType quant_type = quant::parse_model_quant_type(options.type);

  int n_vocab = p.n_vocab;
  if (vocab_source) {
    n_vocab = static_cast<int>(vocab_source->get_string_array("tokenizer.ggml.tokens")
                                   ? vocab_source->get_string_array("tokenizer.ggml.tokens")->size()
                                   : 0);
  }

  gguf::Writer w;
  // Keys in the order llama.cpp's converter writes them.
  w.set("general.architecture", "llama");
  w.set("general.name", default_name(p));
  w.set("llama.block_count", static_cast<uint32_t>(p.n_layer));
  w.set("llama.context_length", static_cast<uint32_t>(p.n_ctx_train));
  w.set("llama.embedding_length", static_cast<uint32_t>(p.n_embd));
  w.set("llama.feed_forward_length", static_cast<uint32_t>(p.n_ff));
  w.set("llama.attention.head_count", static_cast<uint32_t>(p.n_head));
  w.set("llama.attention.head_count_kv", static_cast<uint32_t>(p.n_head_kv));
  w.set("llama.rope.freq_base", p.rope_base);
  w.set("llama.attention.layer_norm_rms_epsilon", p.rms_eps);
  w.set("general.file_type", static_cast<uint32_t>(quant::file_type_id(quant_type)));
  w.set("llama.vocab_size", static_cast<uint32_t>(n_vocab));
  w.set("llama.rope.dimension_count", static_cast<uint32_t>(p.n_embd / p.n_head));
  if (vocab_source) {
    copy_tokenizer_keys(*vocab_source, w);
  } else {
    SynthVocab v = make_synth_vocab(n_vocab);
    w.set("tokenizer.ggml.model", "llama");
    w.set("tokenizer.ggml.tokens", std::move(v.tokens));
    w.set("tokenizer.ggml.scores", std::move(v.scores));
    w.set("tokenizer.ggml.token_type", std::move(v.types));
    w.set("tokenizer.ggml.bos_token_id", uint32_t{1});
    w.set("tokenizer.ggml.eos_token_id", uint32_t{2});
    w.set("tokenizer.ggml.unknown_token_id", uint32_t{0});
    w.set("tokenizer.ggml.add_bos_token", true);
    w.set("tokenizer.ggml.add_eos_token", false);
  }
  w.set("general.quantization_version", uint32_t{2});

  auto plan = std::make_shared<std::vector<TensorPlan>>(plan_tensors(p, n_vocab));
  std::vector<quant::TensorToQuantize> infos;
  for (const TensorPlan& t : *plan) {
    infos.push_back({t.name, t.is_vector ? std::vector<uint64_t>{static_cast<uint64_t>(t.n_cols)}
                                         : std::vector<uint64_t>{static_cast<uint64_t>(t.n_cols), static_cast<uint64_t>(t.n_rows)}});
  }
  const std::vector<GgmlType> types = quant::choose_tensor_types(quant_type, infos, p.n_layer);
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < plan->size(); ++i) {
    TensorPlan& t = (*plan)[i];
    t.type = types[i];
    total_bytes += ggml_row_bytes(t.type, static_cast<uint64_t>(t.n_cols)) * static_cast<uint64_t>(t.n_rows);
  }

  const int n_threads = options.n_threads > 0 ? options.n_threads : std::max(1u, std::thread::hardware_concurrency());
  auto bytes_done = std::make_shared<uint64_t>(0);
  for (size_t i = 0; i < plan->size(); ++i) {
    const TensorPlan& t = (*plan)[i];
    std::vector<uint64_t> shape = t.is_vector ? std::vector<uint64_t>{static_cast<uint64_t>(t.n_cols)}
                                              : std::vector<uint64_t>{static_cast<uint64_t>(t.n_cols), static_cast<uint64_t>(t.n_rows)};
    w.add_tensor(t.name, t.type, std::move(shape),
                 [plan, i, seed = options.seed, n_threads, bytes_done, total_bytes,
                  progress = options.on_progress](std::span<uint8_t> out) {
                   const TensorPlan& tensor = (*plan)[i];
                   produce_tensor(tensor, seed, i, n_threads, out);
                   *bytes_done += out.size();
                   if (progress) progress({i, plan->size(), tensor.name, tensor.type, *bytes_done, total_bytes});
                 });
  }
  return w;
}

void write_synth_model(const SynthOptions& options, const std::string& path) {
  if (options.vocab_from.empty()) {
    make_synth_writer(options, nullptr).write(path);
    return;
  }
  const gguf::File vocab = gguf::File::open(options.vocab_from);
  make_synth_writer(options, &vocab).write(path);
}

}  // namespace tessera::model
