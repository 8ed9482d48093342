// Random inputs and references shared by the tests of the batched kernels (matmul_batch, paged_attention).
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gguf/ggml_type.h"
#include "quant/quant.h"

namespace tessera::cuda::test {

inline std::vector<float> uniform_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline float round_to_f16(float x) { return quant::fp16_to_fp32(quant::fp32_to_fp16(x)); }

// A matrix of one of the matmul_batch types in the file's layout: random bytes (every quant, scale and min pattern
// occurs, Q6_K's int8 scales of both signs), with each block's f16 scale fields set to a small positive value so
// that every weight is finite.
inline std::vector<uint8_t> random_blocks(GgmlType type, int64_t n_rows, int64_t n_cols, uint32_t seed) {
  std::vector<uint8_t> bytes(ggml_row_bytes(type, static_cast<uint64_t>(n_cols)) * static_cast<size_t>(n_rows));
  std::mt19937 rng(seed);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  std::vector<size_t> scale_fields;
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
      scale_fields = {0};
      break;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      scale_fields = {0, 2};
      break;
    case GgmlType::Q6_K:
      scale_fields = {208};
      break;
    default:
      return {};
  }
  const size_t block_bytes = ggml_type_traits(type).block_bytes;
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (size_t block = 0; block < bytes.size() / block_bytes; ++block) {
    for (const size_t field : scale_fields) {
      const uint16_t h = quant::fp32_to_fp16(scale(rng));
      std::memcpy(bytes.data() + block * block_bytes + field, &h, 2);
    }
  }
  return bytes;
}

// quant::dequantize_row_ref of every row.
inline std::vector<float> dequantize_rows(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n_rows,
                                          int64_t n_cols) {
  std::vector<float> out(static_cast<size_t>(n_rows * n_cols));
  const size_t row_bytes = ggml_row_bytes(type, static_cast<uint64_t>(n_cols));
  for (int64_t r = 0; r < n_rows; ++r) {
    quant::dequantize_row_ref(type, bytes.data() + r * row_bytes, out.data() + r * n_cols, n_cols);
  }
  return out;
}

}  // namespace tessera::cuda::test
