// Run-time choice of kernels: the CPU's best instruction set, lowered by TESSERA_SIMD, with per-type fallback to
// the next level down when a level has no kernel for a type.
#include <stdexcept>
#include <string>
#include <string_view>

#include "quant/kernels.h"
#include "quant/reference.h"
#include "util/env_options.h"

namespace tessera::quant {
namespace detail {

SimdLevel cpu_simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return SimdLevel::Avx512Vnni;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2")) {
    return SimdLevel::Avx2;
  }
#endif
  return SimdLevel::Scalar;
}

namespace {

SimdLevel lower(SimdLevel level) { return level == SimdLevel::Avx512Vnni ? SimdLevel::Avx2 : SimdLevel::Scalar; }

SimdLevel choose_level() {
  const SimdLevel cpu = cpu_simd_level();
  SimdLevel requested = cpu;  // util::env_options has checked that TESSERA_SIMD is empty or one of the names
  for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni}) {
    if (simd_level_name(level) == util::env_options().simd) requested = level;
  }
  return static_cast<int>(requested) < static_cast<int>(cpu) ? requested : cpu;
}

GemmKernel gemm_kernel(SimdLevel level, GgmlType weight_type) {
  for (;; level = lower(level)) {
    GemmKernel k = level == SimdLevel::Avx512Vnni ? gemm_kernel_avx512(weight_type)
                   : level == SimdLevel::Avx2     ? gemm_kernel_avx2(weight_type)
                                                  : gemm_kernel_scalar(weight_type);
    if (k || level == SimdLevel::Scalar) return k;
  }
}

QuantizeKernel activation_quantizer(SimdLevel level, GgmlType act_type) {
  for (;; level = lower(level)) {
    QuantizeKernel k = level == SimdLevel::Avx512Vnni ? activation_quantizer_avx512(act_type)
                       : level == SimdLevel::Avx2     ? activation_quantizer_avx2(act_type)
                                                      : activation_quantizer_scalar(act_type);
    if (k || level == SimdLevel::Scalar) return k;
  }
}

}  // namespace

void gemm_at(SimdLevel level, GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols,
             int64_t row_begin, int64_t row_end, const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y,
             int64_t ldy) {
  ref::require_supported(weight_type, false);
  ref::block_count(weight_type, n_cols);
  const GemmKernel kernel = gemm_kernel(level, weight_type);
  if (!kernel) throw std::runtime_error("tensor type " + std::string(ggml_type_name(weight_type)) + " is not supported yet");
  if (row_end <= row_begin || n_tokens <= 0) return;
  kernel(weights, weight_row_bytes, n_cols, row_begin, row_end, xq, xq_row_bytes, n_tokens, y, ldy);
}

void quantize_activations_at(SimdLevel level, GgmlType weight_type, const float* x, void* xq, int64_t n) {
  const GgmlType act = activation_type(weight_type);
  ref::block_count(act, n);
  activation_quantizer(level, act)(x, xq, n);
}

}  // namespace detail

SimdLevel active_simd_level() {
  static const SimdLevel level = detail::choose_level();
  return level;
}

std::string_view simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512Vnni: return "avx512";
  }
  return "unknown";
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  // The reference is already a straight loop per element; the hot paths go through gemm instead.
  dequantize_row_ref(type, src, dst, n);
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n) { quantize_row_ref(type, src, dst, n); }

GgmlType activation_type(GgmlType weight_type) {
  ref::require_supported(weight_type, false);
  switch (weight_type) {
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0: return GgmlType::Q8_0;
    case GgmlType::Q4_1:
    case GgmlType::Q5_1: return GgmlType::Q8_1;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return GgmlType::Q8_K;
    // Half-precision weights take half-precision activations, as in llama.cpp (closer to its logits).
    case GgmlType::F16: return GgmlType::F16;
    case GgmlType::BF16: return GgmlType::BF16;
    default: return GgmlType::F32;
  }
}

size_t activation_row_bytes(GgmlType weight_type, int64_t n) {
  const GgmlType act = activation_type(weight_type);
  return static_cast<size_t>(ref::block_count(act, n)) * ggml_type_traits(act).block_bytes;
}

void quantize_activations(GgmlType weight_type, const float* x, void* xq, int64_t n) {
  detail::quantize_activations_at(active_simd_level(), weight_type, x, xq, n);
}

void gemm(GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols, int64_t row_begin,
          int64_t row_end, const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy) {
  detail::gemm_at(active_simd_level(), weight_type, weights, weight_row_bytes, n_cols, row_begin, row_end, xq,
                  xq_row_bytes, n_tokens, y, ldy);
}

}  // namespace tessera::quant
