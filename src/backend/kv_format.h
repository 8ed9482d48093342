// How the KV cache stores keys and values; shared by the backends and their kernels. Keys and values each have
// their own format (llama.cpp's --cache-type-k / --cache-type-v). The quantized formats store each KV head's row
// in blocks of 32 values with one f16 scale, as ggml's Q8_0 and Q4_0 do (the CPU keeps ggml's blocks byte for
// byte; the CUDA cache keeps the same numbers in planes, see backend/cuda/kernels.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tessera {

enum class KvFormat { F16, F32, BF16, Q8_0, Q4_0 };

struct KvFormats {
  KvFormat k = KvFormat::F16;
  KvFormat v = KvFormat::F16;

  KvFormats() = default;
  // One format for both, the common case: `options.kv_format = KvFormat::Q8_0`.
  KvFormats(KvFormat both) : k(both), v(both) {}  // NOLINT(google-explicit-constructor)
  KvFormats(KvFormat keys, KvFormat values) : k(keys), v(values) {}
  bool operator==(const KvFormats& o) const { return k == o.k && v == o.v; }
  bool operator!=(const KvFormats& o) const { return !(*this == o); }
};

inline constexpr int kKvQuantBlock = 32;  // values per scale in Q8_0 and Q4_0

std::string_view kv_format_name(KvFormat format);  // "f16", "q8_0", ...
// The format of a --cache-type name, or none.
std::optional<KvFormat> parse_kv_format(std::string_view name);
// "f16" when keys and values agree, else "k q8_0, v f16".
std::string kv_formats_name(KvFormats formats);
bool kv_format_is_quantized(KvFormat format);
// Bytes that n values take (n a multiple of kKvQuantBlock for the quantized formats).
size_t kv_row_bytes(KvFormat format, int64_t n);

// A quantized format's blocks are 32 consecutive values of a cache slot's keys (or values), its KV heads in
// order: within one head when head_dim is a multiple of 32, across 32 / head_dim heads when head_dim divides 32
// (as ggml's rows of a token's keys are). kv_heads_per_block_row is that head count (1 otherwise, and for the
// other formats); kv_format_unsupported says why a model's heads do not fit a format, or is empty.
int kv_heads_per_block_row(KvFormat format, int head_dim);
std::string kv_format_unsupported(KvFormat format, int head_dim, int n_head_kv);

}  // namespace tessera
