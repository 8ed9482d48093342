// What attention.cpp's dispatch needs from the per-instruction-set files (internal to src/backend/cpu).
#pragma once

#include <cstdint>

#include "backend/cpu/attention.h"

namespace tessera::cpu::detail {

// Tile sizes every instruction set stays within, so that one scratch size fits all of them.
inline constexpr int kMaxTileRows = 8;      // query rows that share each load of a key or value
inline constexpr int kMaxKeyTile = 32;      // keys per panel of the transposed keys
inline constexpr int kScratchAlignment = 16;  // floats: scratch buffers start on 64-byte cache lines
inline constexpr int kMaxHeadDim = 512;      // as the model loader allows

// Below this exp(x) is no longer a normal float; the vectorized exp returns 0 there.
inline constexpr float kExpMinArg = -87.33654f;

void attend_block_avx2(const AttentionBlock& block, float* scratch);    // needs AVX2, FMA, F16C
void attend_block_avx512(const AttentionBlock& block, float* scratch);  // needs AVX-512 F/DQ, F16C
void attend_block_scored_avx2(const AttentionBlock& block, float* scores, int64_t score_stride);
void attend_block_scored_avx512(const AttentionBlock& block, float* scores, int64_t score_stride);
void softmax_exp_avx2(const float* x, float* y, int64_t n);
void softmax_exp_avx512(const float* x, float* y, int64_t n);
void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n);
void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n);

}  // namespace tessera::cpu::detail
