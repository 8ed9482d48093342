#include "backend/cpu/f16_convert.h"

#include "quant/quant.h"

namespace tessera::cpu {

void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  static const bool has_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  if (has_f16c) {
    detail::f16_to_f32_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = quant::fp16_to_fp32(src[i]);
}

}  // namespace tessera::cpu
