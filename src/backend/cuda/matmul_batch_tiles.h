// The tiles of the batched quantized matmul (matmul_batch.h) as index math that its kernels and the host tests share
// (nothing here needs a GPU):
// - A k-tile is kTileCols = 256 columns of W: one K-quant super-block, eight 32-value blocks. A block of the kernel
//   owns kTileRows rows of W and copies each row's bytes of a k-tile into shared memory as Tile<T>::kUnits 16-byte
//   units (Tile<T>::unit_offset says where each is in a device row, device_layout.h), kStride bytes apart.
// - An mma.m16n8k16 k-step kk (0..15) is the columns 16kk .. 16kk+15 of the tile. Lane 4g + t holds columns
//   16kk + 4t .. 16kk + 4t + 3 of rows g and g + 8 of its m-tile, in its A fragment's slots 2t, 2t+1, 2t+8, 2t+9
//   in that order, and the same four columns of token g of its n-tile in its B fragment. So consecutive lanes read
//   consecutive 4-byte words of a weight row (Tile<T>::decode turns one into four values), and a B fragment is one
//   8-byte load of the activation tile.
// - plan_matmul_batch: the tile shape, pipeline depth and K split of one product on one device.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "backend/cuda/device_limits.h"
#include "gguf/ggml_type.h"

namespace tessera::cuda {

constexpr int kTileCols = 256;
constexpr int kTileRows = 128;
constexpr int kTileUnitBytes = 16;  // one cp.async
// Bytes from one token's row of the f16 activation tile to the next: 32 spare bytes put the 8-byte B loads of the
// four token rows of a half-warp in different banks.
constexpr int kXTileStride = 2 * kTileCols + 32;
constexpr int kXTileUnits = 2 * kTileCols / kTileUnitBytes;
constexpr int kMaxTileStages = 4;

// ---- loads that work on the host (tests) and the device -----------------------------------------------------------

__host__ __device__ inline uint32_t tile_word(const uint8_t* p) {  // 4-byte aligned
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
#endif
}
__host__ __device__ inline uint16_t tile_u16(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint16_t*>(p);
#else
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
#endif
}
__host__ __device__ inline uint32_t tile_word_a2(const uint8_t* p) {  // 2-byte aligned
  return static_cast<uint32_t>(tile_u16(p)) | (static_cast<uint32_t>(tile_u16(p + 2)) << 16);
}
__host__ __device__ inline float tile_half(const uint8_t* p) { return __half2float(__ushort_as_half(tile_u16(p))); }

// Byte i of w minus kOffset as a float, exactly: the byte goes into the mantissa of 2^23 and one subtraction
// removes both (dequant.cuh's int_to_float; on the device one byte permute instead of a shift and a mask).
template <int kOffset>
__host__ __device__ inline float byte_level(uint32_t w, int i) {
#ifdef __CUDA_ARCH__
  const float f = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | static_cast<unsigned>(i)));
#else
  const uint32_t bits = 0x4B000000u | ((w >> (8 * i)) & 0xFFu);
  float f;
  std::memcpy(&f, &bits, 4);
#endif
  return f - (8388608.0f + static_cast<float>(kOffset));
}

// The 6-bit scale and min j of a Q4_K / Q5_K super-block's 12 packed bytes (dequant.cuh's scale_min_k4).
__host__ __device__ inline void k4_scale_min(const uint8_t* scales, int j, int& sc, int& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// ---- per-type tiles ---------------------------------------------------------------------------------------------
// Tile<T>: kRawBytes of a row's k-tile (kUnits units), copied kStride bytes apart (a multiple of 16 that puts the
// 4-byte loads of rows g = 0..7 and lanes t = 0..3 in 32 different banks); unit_offset(u, kb, n_kb): the byte
// offset of unit u of k-tile kb in a device row of n_kb k-tiles; decode(raw, t, kb, kk, v): columns 16kk + 4t ..
// +3 of the copied k-tile kb of one row, with the value formulas of quant::dequantize_row_ref (and Chunk<T> in
// dequant.cuh) operation for operation.
template <GgmlType T>
struct Tile;

// Q4_0: eight 18-byte blocks (f16 d, qs[16]); value v of a block is d * (q - 8), q the low nibble of qs[v] for
// v < 16, the high nibble of qs[v - 16] otherwise. Columns 16kk.. are block kk / 2, low nibbles for even kk.
template <>
struct Tile<GgmlType::Q4_0> {
  static constexpr int kRawBytes = 144, kStride = 144, kUnits = kRawBytes / kTileUnitBytes;
  __host__ __device__ static int64_t unit_offset(int u, int64_t kb, int64_t) { return kRawBytes * kb + 16 * u; }
  __host__ __device__ static void decode(const uint8_t* raw, int t, int64_t, int kk, float v[4]) {
    const uint8_t* block = raw + 18 * (kk / 2);
    const float d = tile_half(block);
    const uint32_t q = (tile_word_a2(block + 2 + 4 * t) >> (4 * (kk % 2))) & 0x0F0F0F0Fu;
    for (int i = 0; i < 4; ++i) v[i] = byte_level<8>(q, i) * d;
  }
};

// Q8_0: eight 34-byte blocks (f16 d, int8 qs[32]); value v is d * qs[v]. Columns 16kk.. are block kk / 2, values
// 16 (kk % 2)...
template <>
struct Tile<GgmlType::Q8_0> {
  static constexpr int kRawBytes = 272, kStride = 272, kUnits = kRawBytes / kTileUnitBytes;
  __host__ __device__ static int64_t unit_offset(int u, int64_t kb, int64_t) { return kRawBytes * kb + 16 * u; }
  __host__ __device__ static void decode(const uint8_t* raw, int t, int64_t, int kk, float v[4]) {
    const uint8_t* block = raw + 34 * (kk / 2);
    const float d = tile_half(block);
    // Flipping bit 7 maps the signed byte s to s + 128.
    const uint32_t q = tile_word_a2(block + 2 + 16 * (kk % 2) + 4 * t) ^ 0x80808080u;
    for (int i = 0; i < 4; ++i) v[i] = byte_level<128>(q, i) * d;
  }
};

// Q4_K: one 144-byte super-block (f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, qs[128]). Value 64p + 32h + l
// is d * sc_j * q - dmin * m_j, j = 2p + h, q nibble h of qs[32p + l]. Columns 16kk.. are sub-block j = kk / 2,
// nibble (kk / 2) % 2 of qs[32 (kk / 4) + 16 (kk % 2) ..].
template <>
struct Tile<GgmlType::Q4_K> {
  static constexpr int kRawBytes = 144, kStride = 144, kUnits = kRawBytes / kTileUnitBytes;
  __host__ __device__ static int64_t unit_offset(int u, int64_t kb, int64_t) { return kRawBytes * kb + 16 * u; }
  __host__ __device__ static void decode(const uint8_t* raw, int t, int64_t, int kk, float v[4]) {
    const int j = kk / 2;
    int sc, m;
    k4_scale_min(raw + 4, j, sc, m);
    const float dl = tile_half(raw) * static_cast<float>(sc), ml = tile_half(raw + 2) * static_cast<float>(m);
    const uint32_t q = (tile_word(raw + 16 + 32 * (kk / 4) + 16 * (kk % 2) + 4 * t) >> (4 * (j % 2))) & 0x0F0F0F0Fu;
    for (int i = 0; i < 4; ++i) v[i] = dl * byte_level<0>(q, i) - ml;
  }
};

// Q5_K: one 176-byte super-block (d, dmin, scales[12] as Q4_K's, qh[32], qs[128]): Q4_K's values plus a fifth bit,
// bit j of qh[l] for value 64p + 32h + l.
template <>
struct Tile<GgmlType::Q5_K> {
  static constexpr int kRawBytes = 176, kStride = 176, kUnits = kRawBytes / kTileUnitBytes;
  __host__ __device__ static int64_t unit_offset(int u, int64_t kb, int64_t) { return kRawBytes * kb + 16 * u; }
  __host__ __device__ static void decode(const uint8_t* raw, int t, int64_t, int kk, float v[4]) {
    const int j = kk / 2;
    int sc, m;
    k4_scale_min(raw + 4, j, sc, m);
    const float dl = tile_half(raw) * static_cast<float>(sc), ml = tile_half(raw + 2) * static_cast<float>(m);
    const uint32_t low = (tile_word(raw + 48 + 32 * (kk / 4) + 16 * (kk % 2) + 4 * t) >> (4 * (j % 2))) & 0x0F0F0F0Fu;
    const uint32_t high = (tile_word(raw + 16 + 16 * (kk % 2) + 4 * t) >> j) & 0x01010101u;
    const uint32_t q = low | (high << 4);
    for (int i = 0; i < 4; ++i) v[i] = dl * byte_level<0>(q, i) - ml;
  }
};

// Q6_K in its device layout (a row's ql of every super-block, then their qh, scales and d). The copy of k-tile kb
// is ql[128] at 0, qh[64] at 128, scales[16] at 192 and at 208 the 16 bytes of d values that hold this super-block's
// (at byte 2kb % 16). Value 128h + 32k + l is d * scales[(128h + 32k + l) / 16] * (q - 32), q = nibble k / 2 of
// ql[64h + 32 (k % 2) + l] | ((qh[32h + l] >> 2k) & 3) << 4. Columns 16kk.. have h = kk / 8, k = (kk % 8) / 2,
// l from 16 (kk % 2), and the one scale scales[kk]. The stride is padded by 16 bytes (56 words would put rows g and
// g + 4 in the same banks).
template <>
struct Tile<GgmlType::Q6_K> {
  static constexpr int kRawBytes = 224, kStride = 240, kUnits = kRawBytes / kTileUnitBytes;
  __host__ __device__ static int64_t unit_offset(int u, int64_t kb, int64_t n_kb) {
    if (u < 8) return 128 * kb + 16 * u;
    if (u < 12) return 128 * n_kb + 64 * kb + 16 * (u - 8);
    if (u == 12) return 192 * n_kb + 16 * kb;
    return 208 * n_kb + ((2 * kb) & ~int64_t{15});
  }
  __host__ __device__ static void decode(const uint8_t* raw, int t, int64_t kb, int kk, float v[4]) {
    const int h = kk / 8, k = (kk % 8) / 2;
    const float dl = tile_half(raw + 208 + (2 * kb) % 16) * static_cast<float>(static_cast<int8_t>(raw[192 + kk]));
    const uint32_t low =
        (tile_word(raw + 64 * h + 32 * (k % 2) + 16 * (kk % 2) + 4 * t) >> (4 * (k / 2))) & 0x0F0F0F0Fu;
    const uint32_t high = (tile_word(raw + 128 + 32 * h + 16 * (kk % 2) + 4 * t) >> (2 * k)) & 0x03030303u;
    const uint32_t q = low | (high << 4);
    for (int i = 0; i < 4; ++i) v[i] = dl * byte_level<32>(q, i);
  }
};

// Calls f.template operator()<T>() for the types that have tiles; false for the others.
template <class F>
bool dispatch_tile_type(GgmlType type, F&& f) {
  switch (type) {
    case GgmlType::Q4_0:
      f.template operator()<GgmlType::Q4_0>();
      return true;
    case GgmlType::Q8_0:
      f.template operator()<GgmlType::Q8_0>();
      return true;
    case GgmlType::Q4_K:
      f.template operator()<GgmlType::Q4_K>();
      return true;
    case GgmlType::Q5_K:
      f.template operator()<GgmlType::Q5_K>();
      return true;
    case GgmlType::Q6_K:
      f.template operator()<GgmlType::Q6_K>();
      return true;
    default:
      return false;
  }
}

__host__ __device__ constexpr bool has_tiles(GgmlType type) {
  return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 || type == GgmlType::Q4_K || type == GgmlType::Q5_K ||
         type == GgmlType::Q6_K;
}

__host__ __device__ constexpr int tile_stride(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
      return Tile<GgmlType::Q4_0>::kStride;
    case GgmlType::Q8_0:
      return Tile<GgmlType::Q8_0>::kStride;
    case GgmlType::Q4_K:
      return Tile<GgmlType::Q4_K>::kStride;
    case GgmlType::Q5_K:
      return Tile<GgmlType::Q5_K>::kStride;
    case GgmlType::Q6_K:
      return Tile<GgmlType::Q6_K>::kStride;
    default:
      return 0;
  }
}

// ---- block shapes -------------------------------------------------------------------------------------------------
// A block owns kTileRows rows and tile_tokens tokens (16, 32, 64 or 128). Its warps split the rows only, so that
// each weight is decoded once: a warp owns m_tiles m-tiles of 16 rows and all the block's tokens (m_tiles * tokens
// / 2 accumulators per thread). Two m-tiles per warp let each B fragment serve 32 rows, which halves the activation
// tile's shared-memory reads; at 128 tokens that would be 128 accumulators, so there it is one m-tile and 8 warps.
struct TileShape {
  int warps = 0;
  int m_tiles = 0;
};
__host__ __device__ constexpr TileShape tile_shape(int tile_tokens) {
  return tile_tokens >= 128 ? TileShape{8, 1} : TileShape{4, 2};
}
__host__ __device__ constexpr int tile_stage_bytes(GgmlType type, int tile_tokens) {
  return kTileRows * tile_stride(type) + tile_tokens * kXTileStride;
}

// ---- planning -----------------------------------------------------------------------------------------------------

// How one product is tiled: token_blocks x row blocks x splits blocks of kTileRows x tile_tokens, each over
// kb_per_split k-tiles (the last split may have fewer) with `stages` k-tiles of copies in flight. splits > 1 needs
// splits * n_tokens * n_rows floats of scratch, which a second kernel sums in a fixed order. tile_tokens == 0: the
// device's shared memory holds no tile of this type.
struct MatmulBatchPlan {
  int tile_tokens = 0;
  int stages = 0;
  int blocks_per_sm = 0;
  int kb_per_split = 0;
  int splits = 0;
};

// The largest token tile that the tokens need (16 for up to 16 tokens ... 128 above 64; at most max_tile_tokens),
// made smaller while not even two stages of it fit in a block; the deepest pipeline (2..kMaxTileStages) with which
// two blocks share an SM, else the deepest for one block; then split K while the row and token blocks are fewer than
// one wave of blocks. n_cols must be a multiple of kTileCols.
MatmulBatchPlan plan_matmul_batch(GgmlType type, int64_t n_rows, int64_t n_cols, int n_tokens,
                                  const DeviceLimits& limits, int max_tile_tokens = 128);

// Arguments of one launch (matmul_batch.cu fills them from a plan).
struct MatmulBatchArgs {
  const uint8_t* w = nullptr;  // device rows, row_bytes apart
  int64_t row_bytes = 0;
  int64_t n_rows = 0;
  int n_kb = 0;               // k-tiles per row
  const __half* x = nullptr;  // [n_tokens][ldx]
  int64_t ldx = 0;
  int n_tokens = 0;
  float* y = nullptr;  // y[t * ldy + r]
  int64_t ldy = 0;
  int accumulate = 0;
  float* partials = nullptr;  // [splits][n_tokens][n_rows] when splits > 1
  int kb_per_split = 0;
  int stages = 0;
};

// The kernels of one weight type (matmul_batch_kernel.cuh, instantiated in matmul_batch_<type>.cu): set their
// shared-memory limit to the device's opt-in maximum, and launch the plan's grid.
template <GgmlType T>
void prepare_matmul_batch_kernels();
template <GgmlType T>
void launch_matmul_batch_kernel(const MatmulBatchArgs& a, const MatmulBatchPlan& plan, cudaStream_t stream);

}  // namespace tessera::cuda
