// Weight matrices rearranged once at load for the AVX-512 VNNI kernels: 16 rows interleaved.
//
// In GGUF's layout one 512-bit integer dot product (vpdpbusd) covers 64 values of one row, and its 16 partial
// sums must then be added together and scaled per sub-block. Interleaving 16 rows puts 4 consecutive values of
// each of 16 rows into one vector instead: every 32-bit lane is one row, the activations are broadcast, the
// per-row sub-block scales apply lane by lane, and the 16 results land in y without any horizontal sum. The
// decoded weights of a sub-block stay in registers while several tokens use them, which is what makes prompt
// processing compute-bound rather than decode-bound.
//
// A matrix is cut into tiles of 16 rows x one block (256 values for the K-quants, 32 for Q4_0 and Q8_0); tile
// (g, i) (rows 16g.., block i) is stored at ((g * n_blocks) + i) * tile_bytes. Tile layouts (values are the GGUF
// block's levels, unchanged unless said):
//   Q4_K (2368 bytes, 64 more than the 16 blocks), in the order the kernel reads it:
//     scales[8][16] (u8, sub-block k of row r)
//     qs[8][4][64]: sub-block k, part p, byte 4r + j: low nibble = level of column 32k + 8p + j of row r,
//                   high nibble = column 32k + 8p + 4 + j
//     d[16], dmin[16] (f16)  |  min pairs[4][16][2] (u8: mins 2j, 2j+1)
//   Q5_K (2880 bytes, 64 more than the 16 blocks): Q4_K's tile (the low 4 bits of each level in qs), with each
//   sub-block's fifth bits after its qs[k], where the kernel reads them next:
//     qh[64]: byte 4r + j, bit q = fifth bit of column 32k + 4q + j of row r
//   Q6_K (3360 bytes, the same as the 16 blocks), in the order the kernel reads it: 8 steps s of 416 bytes, then
//   d[16] (f16). Step s: scale pairs[16][2] (i8: scales 2s, 2s+1), then sub-blocks k = 2s, 2s + 1, each:
//     ql[2][64]: part p, byte 4r + j: low nibble = low 4 bits of column 16k + 8p + j, high nibble = 16k + 8p + 4 + j
//     qh[64]: byte 4r + j: bits 2c, 2c+1 = top 2 bits of column 16k + 4c + j (c = 0..3)
//   Q4_0 (288 bytes): d[16] (f16) | qs[4][64] as one Q4_K sub-block (part p, byte 4r + j: columns 8p + j, 8p + 4 + j)
//   Q8_0 (544 bytes): d[16] (f16) | qs[8][64]: part q, byte 4r + j = value of column 4q + j of row r, plus 128
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "gguf/ggml_type.h"

namespace tessera::quant {

constexpr int64_t kInterleavedRows = 16;

// True when the active SIMD level has an interleaved kernel for `type` and the shape fits it (rows a multiple of
// 16, columns of 256). Otherwise callers keep the GGUF layout and quant::gemm.
bool interleaved_available(GgmlType type, int64_t n_rows, int64_t n_cols);
bool interleaved_layout_exists(GgmlType type);  // whatever the CPU: the layout functions below work
size_t interleaved_tile_bytes(GgmlType type);
size_t interleaved_bytes(GgmlType type, int64_t n_rows, int64_t n_cols);

// Rewrites rows [row_begin, row_end) (multiples of 16) of a matrix in GGUF layout (`src` points at row 0) into
// the interleaved matrix at `dst` (which points at its row 0).
void interleave_rows(GgmlType type, const void* src, size_t src_row_bytes, int64_t n_cols, int64_t row_begin,
                     int64_t row_end, void* dst);
// The inverse for one row: the GGUF bytes of row `row`. This is the layout's reference definition.
void deinterleave_row(GgmlType type, const void* interleaved, int64_t n_cols, int64_t row, void* dst_row);

// How a pass of fewer than 8 tokens (decode's) asks for the tiles a few KB ahead of the ones it reads. It is the
// last pass over them, streaming them from memory, and which request keeps one core reading fastest depends on
// the processor's own prefetchers; the wrong one costs much of the speed
// (docs/notes/2026-11-27-cpu-weight-prefetch.md).
// Passes of 8 tokens always prefetch into L1: their tiles are read again by the next 8.
enum class WeightPrefetch {
  None,         // leave it to the hardware prefetchers
  NonTemporal,  // prefetchnta: into L1, kept out of the outer caches
  L1,           // prefetcht0
};
// By processor (cpuid's vendor string and family): AMD family 0x19 (Zen 4) None, later AMD families NonTemporal,
// others L1.
WeightPrefetch weight_prefetch_for(std::string_view cpu_vendor, unsigned cpu_family);
WeightPrefetch weight_prefetch_for_cpu();
// That, unless TESSERA_PREFETCH=none|nta|l1 says otherwise (an unknown value throws).
WeightPrefetch active_weight_prefetch();
std::string_view weight_prefetch_name(WeightPrefetch prefetch);

// quant::gemm on an interleaved matrix: y[t * ldy + r] = dot(row r, activation row t) for r in
// [row_begin, row_end) (multiples of 16). Activations as quantize_activations makes them for `type`. The
// prefetch changes only the speed.
void gemm_interleaved(GgmlType type, const void* interleaved, int64_t n_cols, int64_t row_begin, int64_t row_end,
                      const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy,
                      WeightPrefetch prefetch = active_weight_prefetch());

}  // namespace tessera::quant
