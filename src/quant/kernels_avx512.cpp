// AVX-512 VNNI kernels: integer dot products with vpdpbusd (on 256-bit vectors, with AVX-512VL).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/kernels.h"

namespace tessera::quant::detail {
namespace {

inline __m256i dot_u8s8(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
// Scaled sums: maddubs into int16 pairs (no saturation: u <= 63, |s| <= 127), then vpdpwssd multiplies by the
// scales and accumulates in one instruction.
inline __m256i dot_scaled_acc(__m256i acc, __m256i u, __m256i s, __m256i sc) {
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), sc);
}

// Tokens per tile: 32 ymm registers (AVX-512VL) hold 8 tokens' accumulators
constexpr int kTile = 8;

#include "quant/kernels_x86.inc"

}  // namespace

GemmKernel gemm_kernel_avx512(GgmlType weight_type) { return x86_gemm_kernel(weight_type); }
QuantizeKernel activation_quantizer_avx512(GgmlType activation_type) { return x86_activation_quantizer(activation_type); }

}  // namespace tessera::quant::detail
