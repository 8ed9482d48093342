// The tile structs of the interleaved layouts described in interleaved.h (internal to src/quant).
#pragma once

#include <cstdint>

#include "quant/blocks.h"

namespace tessera::quant::detail {

struct TileQ4_K {
  uint16_t d[16];
  uint16_t dmin[16];
  uint8_t scales[8][16];
  uint8_t min_pairs[4][16][2];
  uint8_t qs[8][4][64];
};
// Q4_K's tile plus the fifth bits: qh[k] byte 4r + j, bit q = bit 4 of column 32k + 4q + j of row r.
struct TileQ5_K : TileQ4_K {
  uint8_t qh[8][64];
};
// Q6_K's tile in the order the kernel reads it, one step (two sub-blocks) after another: one stream through
// memory, as Q4_K's mostly is.
struct TileQ6_K {
  struct SubBlock {
    uint8_t ql[2][64];
    uint8_t qh[64];
  };
  struct Step {
    int8_t scale_pairs[16][2];
    SubBlock sub[2];
  };
  Step steps[8];
  uint16_t d[16];
};
static_assert(sizeof(TileQ4_K) == 16 * sizeof(BlockQ4_K) + 64 && sizeof(TileQ5_K) == 16 * sizeof(BlockQ5_K) + 64 &&
              sizeof(TileQ6_K) == 16 * sizeof(BlockQ6_K));

// Tiles of 32 columns. Q4_0: levels 0..15 (value = level - 8). Q8_0: the values plus 128 (0..255), so that both
// formats multiply unsigned levels by signed activations and take the offset off through the activations' sums.
struct TileQ4_0 {
  uint16_t d[16];
  uint8_t qs[4][64];
};
struct TileQ8_0 {
  uint16_t d[16];
  uint8_t qs[8][64];  // part q, byte 4r + j: column 4q + j of row r
};
static_assert(sizeof(TileQ4_0) == 16 * sizeof(BlockQ4_0) && sizeof(TileQ8_0) == 16 * sizeof(BlockQ8_0));

// gemm_interleaved for one weight type at one SIMD level (nullptr where there is none).
using InterleavedGemmKernel = void (*)(const void* interleaved, int64_t n_cols, int64_t row_begin, int64_t row_end,
                                       const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy);
InterleavedGemmKernel interleaved_kernel_avx512(GgmlType weight_type);

}  // namespace tessera::quant::detail
