// The tile structs of the interleaved layouts described in interleaved.h (internal to src/quant).
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/interleaved.h"

namespace tessera::quant::detail {

// Q4_K and Q5_K, in the order the one-token kernel reads them: the sub-blocks' scales, the sub-blocks (Q5_K's fifth
// bits beside their sub-block's nibbles), then d, dmin and the sub-blocks' mins, which it applies last.
// Lines read in address order are one stream that the hardware prefetcher follows; with d, dmin and the mins first
// (read after the sub-blocks), Zen 4 decode streamed Q4_K slower when memory was fast
// (docs/notes/2026-11-27-cpu-q4k-tile-order.md).
template <class SubBlock>
struct TileQ45_K {
  uint8_t scales[8][16];
  SubBlock sub[8];
  uint16_t d[16];
  uint16_t dmin[16];
  uint8_t min_pairs[4][16][2];
};
struct Q4_KSubBlock {
  uint8_t qs[4][64];
};
// qh byte 4r + j, bit q = bit 4 of column 32k + 4q + j of row r.
struct Q5_KSubBlock {
  uint8_t qs[4][64];
  uint8_t qh[64];
};
using TileQ4_K = TileQ45_K<Q4_KSubBlock>;
using TileQ5_K = TileQ45_K<Q5_KSubBlock>;
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

// gemm_interleaved for one weight type and prefetch at one SIMD level (nullptr where there is none).
using InterleavedGemmKernel = void (*)(const void* interleaved, int64_t n_cols, int64_t row_begin, int64_t row_end,
                                       const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy);
InterleavedGemmKernel interleaved_kernel_avx512(GgmlType weight_type, WeightPrefetch prefetch);

}  // namespace tessera::quant::detail
