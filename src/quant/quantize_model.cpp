#include "quant/quantize_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "gguf/gguf.h"
#include "quant/quant.h"

namespace tessera::quant {
namespace {

constexpr std::array<std::pair<std::string_view, ModelQuantType>, 17> kNames = {{
    {"F32", ModelQuantType::F32},       {"F16", ModelQuantType::F16},       {"BF16", ModelQuantType::BF16},
    {"Q8_0", ModelQuantType::Q8_0},     {"Q4_0", ModelQuantType::Q4_0},     {"Q4_1", ModelQuantType::Q4_1},
    {"Q5_0", ModelQuantType::Q5_0},     {"Q5_1", ModelQuantType::Q5_1},     {"Q2_K", ModelQuantType::Q2_K},
    {"Q3_K_S", ModelQuantType::Q3_K_S}, {"Q3_K_M", ModelQuantType::Q3_K_M}, {"Q3_K_L", ModelQuantType::Q3_K_L},
    {"Q4_K_S", ModelQuantType::Q4_K_S}, {"Q4_K_M", ModelQuantType::Q4_K_M}, {"Q5_K_S", ModelQuantType::Q5_K_S},
    {"Q5_K_M", ModelQuantType::Q5_K_M}, {"Q6_K", ModelQuantType::Q6_K},
}};

bool is_float_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

// llama-quantize quantizes 2-D (and higher) tensors named *weight, except norms.
bool is_quantized_tensor(const TensorToQuantize& t) {
  return t.shape.size() >= 2 && ends_with(t.name, "weight") && !contains(t.name, "_norm.weight") &&
         !contains(t.name, "ffn_gate_inp.weight");
}

// Layers that get more bits in the _M presets: the first and last eighth, and every third layer between.
bool use_more_bits(int i_layer, int n_layer) {
  return i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer - n_layer / 8) % 3 == 2;
}

// A type whose block divides the row when the chosen one does not (llama.cpp's fallback table; it sends Q2_K and
// Q3_K to IQ4_NL, which Tessera does not compute, so they go to Q4_0 here).
GgmlType fallback_type(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K: return GgmlType::Q4_0;
    case GgmlType::Q4_K: return GgmlType::Q5_0;
    case GgmlType::Q5_K: return GgmlType::Q5_1;
    case GgmlType::Q6_K: return GgmlType::Q8_0;
    default: return GgmlType::F16;
  }
}

}  // namespace

ModelQuantType parse_model_quant_type(std::string_view name) {
  for (const auto& [n, t] : kNames) {
    if (n == name) return t;
  }
  std::string accepted;
  for (const auto& entry : kNames) accepted += (accepted.empty() ? "" : ", ") + std::string(entry.first);
  throw std::invalid_argument(fmt::format("unknown quantization type '{}' (expected one of {})", name, accepted));
}

std::string_view model_quant_type_name(ModelQuantType type) {
  for (const auto& [n, t] : kNames) {
    if (t == type) return n;
  }
  return "unknown";
}

uint32_t file_type_id(ModelQuantType type) { return static_cast<uint32_t>(type); }

GgmlType default_tensor_type(ModelQuantType type) {
  switch (type) {
    case ModelQuantType::F32: return GgmlType::F32;
    case ModelQuantType::F16: return GgmlType::F16;
    case ModelQuantType::BF16: return GgmlType::BF16;
    case ModelQuantType::Q8_0: return GgmlType::Q8_0;
    case ModelQuantType::Q4_0: return GgmlType::Q4_0;
    case ModelQuantType::Q4_1: return GgmlType::Q4_1;
    case ModelQuantType::Q5_0: return GgmlType::Q5_0;
    case ModelQuantType::Q5_1: return GgmlType::Q5_1;
    case ModelQuantType::Q2_K: return GgmlType::Q2_K;
    case ModelQuantType::Q3_K_S:
    case ModelQuantType::Q3_K_M:
    case ModelQuantType::Q3_K_L: return GgmlType::Q3_K;
    case ModelQuantType::Q4_K_S:
    case ModelQuantType::Q4_K_M: return GgmlType::Q4_K;
    case ModelQuantType::Q5_K_S:
    case ModelQuantType::Q5_K_M: return GgmlType::Q5_K;
    case ModelQuantType::Q6_K: return GgmlType::Q6_K;
  }
  throw std::invalid_argument("unknown quantization type");
}

std::vector<GgmlType> choose_tensor_types(ModelQuantType type, const std::vector<TensorToQuantize>& tensors,
                                          int n_layer, std::vector<std::string>* notes) {
  using M = ModelQuantType;
  const GgmlType base = default_tensor_type(type);
  const bool mixes = !is_float_type(base);  // only quantized presets adjust types per tensor
  bool has_output = false;
  int n_attention_wv = 0;
  for (const TensorToQuantize& t : tensors) {
    if (t.name == "output.weight") has_output = true;
    if (contains(t.name, "attn_v.weight") || contains(t.name, "attn_qkv.weight")) ++n_attention_wv;
  }
  // n_head / n_head_kv is not known here; the Q2_K rules that depend on GQA >= 4 read it from the shapes.
  int gqa = 1;
  for (const TensorToQuantize& t : tensors) {
    if (ends_with(t.name, "attn_q.weight") && t.shape.size() >= 2) {
      for (const TensorToQuantize& v : tensors) {
        if (v.name == t.name.substr(0, t.name.size() - 13) + "attn_v.weight" && v.shape.size() >= 2 && v.shape[1]) {
          gqa = static_cast<int>(t.shape[1] / v.shape[1]);
        }
      }
      break;
    }
  }

  int i_attention_wv = 0, i_ffn_down = 0;
  std::vector<GgmlType> types;
  types.reserve(tensors.size());
  for (const TensorToQuantize& t : tensors) {
    if (!is_quantized_tensor(t)) {
      types.push_back(t.type);
      continue;
    }
    GgmlType chosen = base;
    if (mixes) {
      const std::string_view name = t.name;
      const uint64_t nx = t.shape[0];
      if (name == "output.weight" || (!has_output && name == "token_embd.weight")) {
        // The output matrix (or the token embedding doubling as it) keeps more bits.
        if (nx % 256 != 0) {
          chosen = GgmlType::Q8_0;
        } else if (chosen != GgmlType::Q8_0) {
          chosen = GgmlType::Q6_K;
        }
      } else if (name == "token_embd.weight") {
        // Stays at the preset's type.
      } else if (contains(name, "attn_v.weight")) {
        if (type == M::Q2_K) {
          chosen = gqa >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
        } else if (type == M::Q3_K_M) {
          chosen = i_attention_wv < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
        } else if (type == M::Q3_K_L) {
          chosen = GgmlType::Q5_K;
        } else if ((type == M::Q4_K_M || type == M::Q5_K_M) && use_more_bits(i_attention_wv, n_attention_wv)) {
          chosen = GgmlType::Q6_K;
        } else if (type == M::Q4_K_S && i_attention_wv < 4) {
          chosen = GgmlType::Q5_K;
        }
        ++i_attention_wv;
      } else if (contains(name, "ffn_down")) {
        const int i_layer = i_ffn_down;
        if (type == M::Q2_K) {
          chosen = GgmlType::Q3_K;
        } else if (type == M::Q3_K_M) {
          chosen = i_layer < n_layer / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
        } else if (type == M::Q3_K_L) {
          chosen = GgmlType::Q5_K;
        } else if (type == M::Q4_K_M) {
          if (use_more_bits(i_layer, n_layer)) chosen = GgmlType::Q6_K;
        } else if (type == M::Q5_K_M && use_more_bits(i_layer, n_layer)) {
          chosen = GgmlType::Q6_K;
        } else if (type == M::Q4_K_S && i_layer < n_layer / 8) {
          chosen = GgmlType::Q5_K;
        }
        ++i_ffn_down;
      } else if (contains(name, "attn_output.weight")) {
        if (type == M::Q2_K) {
          chosen = GgmlType::Q3_K;
        } else if (type == M::Q3_K_M) {
          chosen = GgmlType::Q4_K;
        } else if (type == M::Q3_K_L) {
          chosen = GgmlType::Q5_K;
        }
      }
    }
    const uint32_t block = ggml_type_traits(chosen).block_size;
    if (t.shape[0] % block != 0) {
      GgmlType fallback = fallback_type(chosen);
      if (t.shape[0] % ggml_type_traits(fallback).block_size != 0) fallback = GgmlType::F16;
      if (notes) {
        notes->push_back(fmt::format("{}: row length {} is not a multiple of the {} block size {}; using {}", t.name,
                                     t.shape[0], ggml_type_name(chosen), block, ggml_type_name(fallback)));
      }
      chosen = fallback;
    }
    types.push_back(chosen);
  }
  return types;
}

QuantizeResult quantize_model(const std::string& input, const std::string& output, ModelQuantType type,
                              int n_threads, bool allow_requantize,
                              const std::function<void(const QuantizeProgress&)>& on_progress) {
  auto in = std::make_shared<gguf::File>(gguf::File::open(input));
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::vector<TensorToQuantize> tensors;
  for (const gguf::TensorInfo& t : in->tensors()) tensors.push_back({t.name, t.shape, t.type});
  for (const TensorToQuantize& t : tensors) {
    if (is_quantized_tensor(t) && !is_float_type(t.type) && !allow_requantize) {
      throw std::runtime_error(fmt::format("{} is already quantized (tensor '{}' is {}); pass --allow-requantize to "
                                           "quantize it again", input, t.name, ggml_type_name(t.type)));
    }
  }
  const int64_t n_layer = in->get_int(in->architecture() + ".block_count").value_or(0);
  QuantizeResult result;
  const std::vector<GgmlType> types = choose_tensor_types(type, tensors, static_cast<int>(n_layer), &result.notes);

  for (size_t i = 0; i < tensors.size(); ++i) {
    // Conversions run on worker threads, so refuse unreadable source types up front.
    if (types[i] != tensors[i].type && !ggml_type_traits(tensors[i].type).computable) {
      throw std::runtime_error(fmt::format("tensor '{}' has type {}, not supported yet", tensors[i].name,
                                           ggml_type_name(tensors[i].type)));
    }
  }

  gguf::Writer w(static_cast<uint32_t>(in->alignment()));
  for (const auto& [key, value] : in->metadata()) w.set(key, value);
  w.set("general.file_type", file_type_id(type));
  w.set("general.quantization_version", uint32_t{2});

  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const gguf::TensorInfo& t = in->tensors()[i];
    result.input_bytes += t.n_bytes;
    total += ggml_row_bytes(types[i], t.row_length()) * t.n_rows();
  }
  result.output_bytes = total;

  auto done = std::make_shared<uint64_t>(0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const gguf::TensorInfo& t = in->tensors()[i];
    const GgmlType to = types[i];
    auto produce = [in, i, to, n_threads, done, total, n_tensors = tensors.size(), on_progress](std::span<uint8_t> out) {
      const gguf::TensorInfo& src = in->tensors()[i];
      const int64_t n_cols = static_cast<int64_t>(src.row_length());
      const int64_t n_rows = static_cast<int64_t>(src.n_rows());
      const size_t in_row = src.row_bytes();
      const size_t out_row = ggml_row_bytes(to, static_cast<uint64_t>(n_cols));
      if (src.type == to) {
        std::copy(src.data, src.data + src.n_bytes, out.begin());
      } else {
        const int workers = static_cast<int>(std::min<int64_t>(n_threads, std::max<int64_t>(1, n_rows / 8)));
        auto work = [&](int w_index) {
          std::vector<float> row(static_cast<size_t>(n_cols));
          for (int64_t r = w_index; r < n_rows; r += workers) {
            dequantize_row(src.type, src.data + r * in_row, row.data(), n_cols);
            quantize_row(to, row.data(), out.data() + r * out_row, n_cols);
          }
        };
        std::vector<std::jthread> threads;  // joined on the way out, also when one cannot be started
        try {
          for (int k = 1; k < workers; ++k) threads.emplace_back(work, k);
        } catch (const std::system_error& e) {
          throw std::runtime_error(fmt::format("cannot start thread {} of {}: {}; use fewer --threads or raise the "
                                               "process limit", threads.size() + 2, workers, e.code().message()));
        }
        work(0);
      }
      *done += out.size();
      if (on_progress) on_progress({i, n_tensors, src.name, src.type, to, *done, total});
    };
    w.add_tensor(t.name, to, t.shape, std::move(produce));
  }
  w.write(output);
  return result;
}

}  // namespace tessera::quant
