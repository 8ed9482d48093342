// AVX2 kernels (compiled with -mavx2 -mfma -mf16c): integer dot products with maddubs + madd.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/kernels.h"

namespace tessera::quant::detail {
namespace {

// maddubs adds pairs into int16 (no saturation here: |u| <= 127 or u <= 63, |s| <= 127), madd pairs into int32.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
inline __m256i dot_scaled_acc(__m256i acc, __m256i u, __m256i s, __m256i sc) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc));
}

// Tokens per tile: 16 ymm registers hold 4 tokens' accumulators with the weights
constexpr int kTile = 4;

#include "quant/kernels_x86.inc"

}  // namespace

GemmKernel gemm_kernel_avx2(GgmlType weight_type) { return x86_gemm_kernel(weight_type); }
QuantizeKernel activation_quantizer_avx2(GgmlType activation_type) { return x86_activation_quantizer(activation_type); }

}  // namespace tessera::quant::detail
