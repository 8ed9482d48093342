// Block formats: reference definitions and fast kernels for every weight type Tessera computes with.
//
// Layouts are bit-compatible with ggml. The scalar reference functions are the definition; every fast kernel is
// tested against them. Fast kernels follow the way fast engines multiply: the activation row is quantized once
// to 8 bits per value (the weight type's "activation type": Q8_0, Q8_1 or Q8_K), then integer dot products run
// block by block (AVX-512 VNNI, AVX2, or portable scalar code, picked at start-up).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "gguf/ggml_type.h"

namespace tessera::quant {

// ---- scalar reference: the definition of each format ------------------------------------------------------
// n is a multiple of the type's block size. Supported: every type with GgmlTypeTraits::computable, plus Q8_K.
void dequantize_row_ref(GgmlType type, const void* src, float* dst, int64_t n);
void quantize_row_ref(GgmlType type, const float* src, void* dst, int64_t n);

// ---- run-time dispatch ------------------------------------------------------------------------------------
enum class SimdLevel { Scalar, Avx2, Avx512Vnni };
// The best level this CPU supports, lowered by TESSERA_SIMD=scalar|avx2|avx512 (tests force each path).
SimdLevel active_simd_level();
std::string_view simd_level_name(SimdLevel level);

// ---- fast paths -------------------------------------------------------------------------------------------
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);  // same bytes as the reference

// The format activations are converted to before a dot product with weights of `weight_type`, as in llama.cpp:
// Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, F16 for F16, BF16 for BF16, F32 for F32.
// Q8_0/Q8_1 use llama.cpp's run-time rounding (127/amax, ties to even), not quantize_row_ref's.
GgmlType activation_type(GgmlType weight_type);
size_t activation_row_bytes(GgmlType weight_type, int64_t n);
void quantize_activations(GgmlType weight_type, const float* x, void* xq, int64_t n);

// The one matrix kernel, for decode (n_tokens = 1) and prompt processing alike:
//   y[t * ldy + r] = dot(weight row r, activation row t)   for r in [row_begin, row_end), t in [0, n_tokens)
// `weights` points at row 0; `xq` holds n_tokens rows made by quantize_activations, xq_row_bytes apart.
// Callers split [0, n_rows) across threads; the kernel itself is single-threaded.
void gemm(GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols,
          int64_t row_begin, int64_t row_end, const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y,
          int64_t ldy);

// The scalar reference of gemm: dequantize_row_ref of each weight row, dot with the float activations in double.
void gemm_ref(GgmlType weight_type, const void* weights, size_t weight_row_bytes, int64_t n_cols,
              int64_t row_begin, int64_t row_end, const float* x, int64_t n_tokens, float* y, int64_t ldy);

// ---- half-precision helpers -------------------------------------------------------------------------------
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even, like ggml's
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even, NaN kept quiet, like ggml's

}  // namespace tessera::quant
