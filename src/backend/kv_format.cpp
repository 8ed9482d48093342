#include "backend/kv_format.h"

#include <array>
#include <utility>

namespace tessera {
namespace {

constexpr std::array<std::pair<KvFormat, std::string_view>, 5> kNames = {{
    {KvFormat::F16, "f16"},
    {KvFormat::F32, "f32"},
    {KvFormat::BF16, "bf16"},
    {KvFormat::Q8_0, "q8_0"},
    {KvFormat::Q4_0, "q4_0"},
}};

}  // namespace

std::string_view kv_format_name(KvFormat format) {
  for (const auto& [f, name] : kNames) {
    if (f == format) return name;
  }
  return "unknown";
}

std::optional<KvFormat> parse_kv_format(std::string_view name) {
  for (const auto& [f, n] : kNames) {
    if (n == name) return f;
  }
  return std::nullopt;
}

std::string kv_formats_name(KvFormats formats) {
  if (formats.k == formats.v) return std::string(kv_format_name(formats.k));
  return "k " + std::string(kv_format_name(formats.k)) + ", v " + std::string(kv_format_name(formats.v));
}

bool kv_format_is_quantized(KvFormat format) { return format == KvFormat::Q8_0 || format == KvFormat::Q4_0; }

size_t kv_row_bytes(KvFormat format, int64_t n) {
  const size_t count = static_cast<size_t>(n);
  switch (format) {
    case KvFormat::F32: return 4 * count;
    case KvFormat::F16:
    case KvFormat::BF16: return 2 * count;
    case KvFormat::Q8_0: return count / kKvQuantBlock * (2 + kKvQuantBlock);
    case KvFormat::Q4_0: return count / kKvQuantBlock * (2 + kKvQuantBlock / 2);
  }
  return 0;
}

int kv_heads_per_block_row(KvFormat format, int head_dim) {
  return kv_format_is_quantized(format) && head_dim < kKvQuantBlock ? kKvQuantBlock / head_dim : 1;
}

std::string kv_format_unsupported(KvFormat format, int head_dim, int n_head_kv) {
  if (!kv_format_is_quantized(format)) return "";
  const bool fits = head_dim % kKvQuantBlock == 0 ||
                    (kKvQuantBlock % head_dim == 0 && n_head_kv % (kKvQuantBlock / head_dim) == 0);
  if (fits) return "";
  return "a " + std::string(kv_format_name(format)) + " KV cache needs blocks of 32 values: a head dimension that is a "
         "multiple of 32, or a divisor of 32 with whole blocks of heads (head dimension " + std::to_string(head_dim) +
         ", " + std::to_string(n_head_kv) + " KV heads)";
}

}  // namespace tessera
