// The reference entry points: dispatch by type to the per-format definitions, and the reference gemm.
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/reference.h"

namespace tessera::quant {
namespace ref {

void require_supported(GgmlType type, bool allow_activation_types) {
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  if (traits.computable) return;
  if (allow_activation_types && (type == GgmlType::Q8_K || type == GgmlType::Q8_1)) return;
  throw std::runtime_error("tensor type " + std::string(traits.name) + " is not supported yet");
}

int64_t block_count(GgmlType type, int64_t n) {
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  if (n < 0 || n % traits.block_size != 0) {
    throw std::invalid_argument("row length " + std::to_string(n) + " is not a multiple of the " +
                                std::string(traits.name) + " block size " + std::to_string(traits.block_size));
  }
  return n / traits.block_size;
}

}  // namespace ref

void dequantize_row_ref(GgmlType type, const void* src, float* dst, int64_t n) {
  ref::require_supported(type, true);
  const int64_t nb = ref::block_count(type, n);
  switch (type) {
    case GgmlType::F32: {
      const float* s = static_cast<const float*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = s[i];
      return;
    }
    case GgmlType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return;
    }
    case GgmlType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case GgmlType::Q4_0: return ref::dequantize_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case GgmlType::Q4_1: return ref::dequantize_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case GgmlType::Q5_0: return ref::dequantize_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case GgmlType::Q5_1: return ref::dequantize_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case GgmlType::Q8_0: return ref::dequantize_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
    case GgmlType::Q8_1: return ref::dequantize_q8_1(static_cast<const BlockQ8_1*>(src), dst, nb);
    case GgmlType::Q2_K: return ref::dequantize_q2_k(static_cast<const BlockQ2_K*>(src), dst, nb);
    case GgmlType::Q3_K: return ref::dequantize_q3_k(static_cast<const BlockQ3_K*>(src), dst, nb);
    case GgmlType::Q4_K: return ref::dequantize_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
    case GgmlType::Q5_K: return ref::dequantize_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
    case GgmlType::Q6_K: return ref::dequantize_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
    case GgmlType::Q8_K: return ref::dequantize_q8_k(static_cast<const BlockQ8_K*>(src), dst, nb);
    default: break;
  }
  throw std::runtime_error("tensor type " + std::string(ggml_type_name(type)) + " is not supported yet");
}

void quantize_row_ref(GgmlType type, const float* src, void* dst, int64_t n) {
  ref::require_supported(type, true);
  const int64_t nb = ref::block_count(type, n);
  switch (type) {
    case GgmlType::F32: {
      float* d = static_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case GgmlType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case GgmlType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case GgmlType::Q4_0: return ref::quantize_q4_0(src, static_cast<BlockQ4_0*>(dst), nb);
    case GgmlType::Q4_1: return ref::quantize_q4_1(src, static_cast<BlockQ4_1*>(dst), nb);
    case GgmlType::Q5_0: return ref::quantize_q5_0(src, static_cast<BlockQ5_0*>(dst), nb);
    case GgmlType::Q5_1: return ref::quantize_q5_1(src, static_cast<BlockQ5_1*>(dst), nb);
    case GgmlType::Q8_0: return ref::quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), nb);
    case GgmlType::Q8_1: return ref::quantize_q8_1(src, static_cast<BlockQ8_1*>(dst), nb);
    case GgmlType::Q2_K: return ref::quantize_q2_k(src, static_cast<BlockQ2_K*>(dst), nb);
    case GgmlType::Q3_K: return ref::quantize_q3_k(src, static_cast<BlockQ3_K*>(dst), nb);
    case GgmlType::Q4_K: return ref::quantize_q4_k(src, static_cast<BlockQ4_K*>(dst), nb);
    case GgmlType::Q5_K: return ref::quantize_q5_k(src, static_cast<BlockQ5_K*>(dst), nb);
    case GgmlType::Q6_K: return ref::quantize_q6_k(src, static_cast<BlockQ6_K*>(dst), nb);
    case GgmlType::Q8_K: return ref::quantize_q8_k(src, static_cast<BlockQ8_K*>(dst), nb);
    default: break;
  }
  throw std::runtime_error("tensor type " + std::string(ggml_type_name(type)) + " is not supported yet");
}

void gemm_ref(GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols, int64_t row_begin,
              int64_t row_end, const float* x, int64_t n_tokens, float* y, int64_t ldy) {
  ref::require_supported(weight_type, false);
  std::vector<float> w(static_cast<size_t>(n_cols));
  for (int64_t r = row_begin; r < row_end; ++r) {
    dequantize_row_ref(weight_type, static_cast<const uint8_t*>(weights) + r * weight_row_bytes, w.data(), n_cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double sum = 0;
      for (int64_t c = 0; c < n_cols; ++c) sum += static_cast<double>(w[c]) * x[t * n_cols + c];
      y[t * ldy + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace tessera::quant
