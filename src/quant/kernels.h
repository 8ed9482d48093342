// The kernel tables behind quant.h's dispatch (internal to src/quant). Each instruction set's file fills in the
// weight types it has a kernel for; the dispatcher falls back level by level to the portable scalar code.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace tessera::quant::detail {

// gemm as declared in quant.h, for one weight type.
using GemmKernel = void (*)(const void* weights, size_t weight_row_bytes, int64_t n_cols, int64_t row_begin,
                            int64_t row_end, const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y,
                            int64_t ldy);
// quantize_activations for one activation format.
using QuantizeKernel = void (*)(const float* x, void* xq, int64_t n);

GemmKernel gemm_kernel_scalar(GgmlType weight_type);
GemmKernel gemm_kernel_avx2(GgmlType weight_type);    // nullptr where AVX2 has no kernel for the type
GemmKernel gemm_kernel_avx512(GgmlType weight_type);  // likewise (AVX-512 VNNI)

QuantizeKernel activation_quantizer_scalar(GgmlType activation_type);
QuantizeKernel activation_quantizer_avx2(GgmlType activation_type);
QuantizeKernel activation_quantizer_avx512(GgmlType activation_type);

// The same operations at a chosen level (which must not exceed what the CPU supports): tests run every level.
void gemm_at(SimdLevel level, GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols,
             int64_t row_begin, int64_t row_end, const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y,
             int64_t ldy);
void quantize_activations_at(SimdLevel level, GgmlType weight_type, const float* x, void* xq, int64_t n);
SimdLevel cpu_simd_level();  // the best level the CPU supports, ignoring TESSERA_SIMD

}  // namespace tessera::quant::detail
