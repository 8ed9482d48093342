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
using ScaleVec = __m256i;  // int32 x8
inline ScaleVec scale_pair(int a, int b) { return _mm256_setr_epi32(a, a, a, a, b, b, b, b); }
inline __m256i dot_scaled(__m256i u, __m256i s, ScaleVec sc) { return _mm256_mullo_epi32(dot_u8s8(u, s), sc); }

#include "quant/kernels_x86.inc"

}  // namespace

GemmKernel gemm_kernel_avx512(GgmlType weight_type) { return x86_gemm_kernel(weight_type); }
QuantizeKernel activation_quantizer_avx512(GgmlType activation_type) { return x86_activation_quantizer(activation_type); }

}  // namespace tessera::quant::detail
