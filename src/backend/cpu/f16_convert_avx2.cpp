#include <immintrin.h>

#include "backend/cpu/f16_convert.h"
#include "quant/quant.h"

namespace tessera::cpu::detail {

void f16_to_f32_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = quant::fp16_to_fp32(src[i]);
}

}  // namespace tessera::cpu::detail
