// Bulk f16 <-> f32 conversion for the KV cache (F16C where the CPU has it). Both directions give the same bits as
// quant::fp16_to_fp32 / quant::fp32_to_fp16 (round to nearest even).
#pragma once

#include <cstdint>

namespace tessera::cpu {

void f16_to_f32(const uint16_t* src, float* dst, int64_t n);
void f32_to_f16(const float* src, uint16_t* dst, int64_t n);

namespace detail {
void f16_to_f32_f16c(const uint16_t* src, float* dst, int64_t n);  // needs F16C
void f32_to_f16_f16c(const float* src, uint16_t* dst, int64_t n);  // needs F16C
}  // namespace detail

}  // namespace tessera::cpu
