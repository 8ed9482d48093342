// Bulk f16 -> f32 conversion for reading the KV cache (F16C where the CPU has it).
#pragma once

#include <cstdint>

namespace tessera::cpu {

void f16_to_f32(const uint16_t* src, float* dst, int64_t n);

namespace detail {
void f16_to_f32_f16c(const uint16_t* src, float* dst, int64_t n);  // needs F16C
}

}  // namespace tessera::cpu
