// The tensor element types a GGUF file can name, with ggml's numeric ids and block geometry.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tessera {

// Values are ggml's `enum ggml_type`; they are stored in files, so they never change.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;   // ggml's name: "F32", "Q4_K", ...
  uint32_t block_size;     // elements per block (1 for plain types)
  uint32_t block_bytes;    // bytes per block
  bool computable;         // Tessera has kernels for it (others load, inspect, and are refused at run time)
};

// Traits of a raw type id read from a file, or nullptr if ggml has no such type.
const GgmlTypeTraits* ggml_type_traits(uint32_t raw_type);
const GgmlTypeTraits& ggml_type_traits(GgmlType type);
std::string_view ggml_type_name(GgmlType type);
std::optional<GgmlType> ggml_type_from_name(std::string_view name);

// Bytes of a row of n elements; n must be a multiple of the block size.
inline uint64_t ggml_row_bytes(GgmlType type, uint64_t n) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  return n / t.block_size * t.block_bytes;
}

}  // namespace tessera
