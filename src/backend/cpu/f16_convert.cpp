#include "backend/cpu/f16_convert.h"

#include "quant/quant.h"

namespace tessera::cpu {
namespace {

#if defined(__x86_64__)
// Asked on first use, not at static initialization, which may run before the compiler's CPU detection.
bool has_f16c() {
  static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return has;
}
#endif

}  // namespace

void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  if (has_f16c()) {
    detail::f16_to_f32_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = quant::fp16_to_fp32(src[i]);
}

void f32_to_f16(const float* src, uint16_t* dst, int64_t n) {
#if defined(__x86_64__)
  if (has_f16c()) {
    detail::f32_to_f16_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = quant::fp32_to_fp16(src[i]);
}

}  // namespace tessera::cpu
