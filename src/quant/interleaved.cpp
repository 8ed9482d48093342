// The interleaved layouts (plain per-value loops: they run once per matrix at load) and the kernel dispatch.
#include "quant/interleaved.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "quant/interleaved_tiles.h"
#include "quant/kernels.h"
#include "quant/quant.h"
#include "util/env_options.h"

namespace tessera::quant {
namespace {

using detail::TileQ4_0;
using detail::TileQ4_K;
using detail::TileQ8_0;
using detail::TileQ5_K;
using detail::TileQ6_K;

// Column c (0..255) of a Q4_K / Q5_K block: 64-value chunks, low nibbles first, then high nibbles of the same 32
// bytes; Q5_K's fifth bit of column c is bit c / 32 of qh[c % 32].
template <class Block>
void set_q45_k_level(Block& b, int c, int level) {
  uint8_t& byte = b.qs[32 * (c / 64) + c % 32];
  const int shift = 4 * ((c % 64) / 32);
  byte = static_cast<uint8_t>((byte & ~(0xF << shift)) | ((level & 0xF) << shift));
  if constexpr (std::is_same_v<Block, BlockQ5_K>) {
    uint8_t& high = b.qh[c % 32];
    high = static_cast<uint8_t>((high & ~(1 << (c / 32))) | ((level >> 4) << (c / 32)));
  }
}

// Column c of a Q6_K block: two halves of 128; in each, 4 runs of 32 take ql's low nibbles (bytes 0..31, then
// 32..63) and then its high nibbles, and qh's bit pairs 0..3 in turn.
struct Q6Position {
  int ql_byte, ql_shift, qh_byte, qh_shift;
};
Q6Position q6_k_position(int c) {
  const int half = c / 128, run = (c % 128) / 32, l = c % 32;
  return {64 * half + l + 32 * (run % 2), 4 * (run / 2), 32 * half + l, 2 * run};
}
void set_q6_k_level(BlockQ6_K& b, int c, int level) {
  const Q6Position p = q6_k_position(c);
  b.ql[p.ql_byte] = static_cast<uint8_t>((b.ql[p.ql_byte] & ~(0xF << p.ql_shift)) | ((level & 0xF) << p.ql_shift));
  b.qh[p.qh_byte] = static_cast<uint8_t>((b.qh[p.qh_byte] & ~(3 << p.qh_shift)) | ((level >> 4) << p.qh_shift));
}

// Nibble of column `col` of row r within a sub-block's parts: 8 columns per part, the low nibble holding the first 4.
int get_nibble(const uint8_t (*parts)[64], int r, int col) {
  return (parts[col / 8][4 * r + col % 4] >> (4 * ((col % 8) / 4))) & 0xF;
}

// Interleaving runs over whole models at load, so it unpacks each block's levels into bytes once and then writes
// the tile bytes in order (deinterleave, the reference, goes value by value).
template <class Block, class Tile>
void interleave_q45_k(const Block* rows[16], Tile& tile) {
  for (int r = 0; r < 16; ++r) {
    const Block& b = *rows[r];
    tile.d[r] = b.d;
    tile.dmin[r] = b.dmin;
    for (int k = 0; k < 8; ++k) {
      uint8_t scale, min;
      scale_min_k4(k, b.scales, &scale, &min);
      tile.scales[k][r] = scale;
      tile.min_pairs[k / 2][r][k % 2] = min;
    }
    uint8_t levels[kQK_K];
    for (int chunk = 0; chunk < 4; ++chunk) {
      for (int l = 0; l < 32; ++l) {
        levels[64 * chunk + l] = b.qs[32 * chunk + l] & 0xF;
        levels[64 * chunk + 32 + l] = b.qs[32 * chunk + l] >> 4;
      }
    }
    for (int k = 0; k < 8; ++k) {
      for (int p = 0; p < 4; ++p) {
        for (int j = 0; j < 4; ++j) {
          const uint8_t* col = levels + 32 * k + 8 * p + j;
          tile.sub[k].qs[p][4 * r + j] = static_cast<uint8_t>(col[0] | (col[4] << 4));
        }
      }
    }
    if constexpr (std::is_same_v<Block, BlockQ5_K>) {
      for (int k = 0; k < 8; ++k) {
        for (int j = 0; j < 4; ++j) {
          int bits = 0;
          for (int q = 0; q < 8; ++q) {
            const int c = 32 * k + 4 * q + j;
            bits |= ((b.qh[c % 32] >> (c / 32)) & 1) << q;
          }
          tile.sub[k].qh[4 * r + j] = static_cast<uint8_t>(bits);
        }
      }
    }
  }
}

template <class Block, class Tile>
void deinterleave_q45_k(const Tile& tile, int r, Block& b) {
  b.d = tile.d[r];
  b.dmin = tile.dmin[r];
  uint8_t scale[8], min[8];
  for (int k = 0; k < 8; ++k) {
    scale[k] = tile.scales[k][r];
    min[k] = tile.min_pairs[k / 2][r][k % 2];
  }
  // The inverse of scale_min_k4.
  for (int j = 0; j < 4; ++j) {
    b.scales[j] = static_cast<uint8_t>(scale[j] | ((scale[j + 4] >> 4) << 6));
    b.scales[j + 4] = static_cast<uint8_t>(min[j] | ((min[j + 4] >> 4) << 6));
    b.scales[j + 8] = static_cast<uint8_t>((scale[j + 4] & 0xF) | ((min[j + 4] & 0xF) << 4));
  }
  for (int c = 0; c < kQK_K; ++c) {
    const auto& sub = tile.sub[c / 32];
    int level = get_nibble(sub.qs, r, c % 32);
    if constexpr (std::is_same_v<Block, BlockQ5_K>) level |= ((sub.qh[4 * r + c % 4] >> ((c % 32) / 4)) & 1) << 4;
    set_q45_k_level(b, c, level);
  }
}

void interleave_q6_k(const BlockQ6_K* rows[16], TileQ6_K& tile) {
  for (int r = 0; r < 16; ++r) {
    const BlockQ6_K& b = *rows[r];
    tile.d[r] = b.d;
    for (int k = 0; k < 16; ++k) tile.steps[k / 2].scale_pairs[r][k % 2] = b.scales[k];
    uint8_t levels[kQK_K];
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = b.ql + 64 * half;
      const uint8_t* qh = b.qh + 32 * half;
      uint8_t* out = levels + 128 * half;
      for (int l = 0; l < 32; ++l) {
        out[l] = static_cast<uint8_t>((ql[l] & 0xF) | ((qh[l] & 3) << 4));
        out[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
        out[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
        out[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
      }
    }
    for (int k = 0; k < 16; ++k) {
      const uint8_t* sub = levels + 16 * k;
      TileQ6_K::SubBlock& out = tile.steps[k / 2].sub[k % 2];
      for (int j = 0; j < 4; ++j) {
        for (int p = 0; p < 2; ++p) {
          out.ql[p][4 * r + j] = static_cast<uint8_t>((sub[8 * p + j] & 0xF) | ((sub[8 * p + 4 + j] & 0xF) << 4));
        }
        out.qh[4 * r + j] = static_cast<uint8_t>((sub[j] >> 4) | ((sub[4 + j] >> 4) << 2) |
                                                 ((sub[8 + j] >> 4) << 4) | ((sub[12 + j] >> 4) << 6));
      }
    }
  }
}

void deinterleave_q6_k(const TileQ6_K& tile, int r, BlockQ6_K& b) {
  b.d = tile.d[r];
  for (int k = 0; k < 16; ++k) b.scales[k] = tile.steps[k / 2].scale_pairs[r][k % 2];
  for (int c = 0; c < kQK_K; ++c) {
    const int k = c / 16, col = c % 16;
    const TileQ6_K::SubBlock& sub = tile.steps[k / 2].sub[k % 2];
    const int high = (sub.qh[4 * r + col % 4] >> (2 * (col / 4))) & 3;
    set_q6_k_level(b, c, get_nibble(sub.ql, r, col) | (high << 4));
  }
}

void interleave_q4_0(const BlockQ4_0* rows[16], TileQ4_0& tile) {
  for (int r = 0; r < 16; ++r) {
    tile.d[r] = rows[r]->d;
    // GGUF: column l in the low nibble of qs[l], column l + 16 in the high nibble.
    uint8_t levels[kQK];
    for (int l = 0; l < 16; ++l) {
      levels[l] = rows[r]->qs[l] & 0xF;
      levels[l + 16] = rows[r]->qs[l] >> 4;
    }
    for (int p = 0; p < 4; ++p) {
      for (int j = 0; j < 4; ++j) {
        tile.qs[p][4 * r + j] = static_cast<uint8_t>(levels[8 * p + j] | (levels[8 * p + 4 + j] << 4));
      }
    }
  }
}

void deinterleave_q4_0(const TileQ4_0& tile, int r, BlockQ4_0& b) {
  b.d = tile.d[r];
  for (int l = 0; l < 16; ++l) {
    b.qs[l] = static_cast<uint8_t>(get_nibble(tile.qs, r, l) | (get_nibble(tile.qs, r, l + 16) << 4));
  }
}

void interleave_q8_0(const BlockQ8_0* rows[16], TileQ8_0& tile) {
  for (int r = 0; r < 16; ++r) {
    tile.d[r] = rows[r]->d;
    for (int c = 0; c < kQK; ++c) tile.qs[c / 4][4 * r + c % 4] = static_cast<uint8_t>(rows[r]->qs[c] + 128);
  }
}

void deinterleave_q8_0(const TileQ8_0& tile, int r, BlockQ8_0& b) {
  b.d = tile.d[r];
  for (int c = 0; c < kQK; ++c) b.qs[c] = static_cast<int8_t>(tile.qs[c / 4][4 * r + c % 4] - 128);
}

// Values per tile column block: 32 for the legacy formats, 256 for the K-quants.
int64_t tile_columns(GgmlType type) { return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 ? kQK : kQK_K; }

void require_layout(GgmlType type, int64_t n_cols) {
  if (!interleaved_layout_exists(type)) {
    throw std::invalid_argument("no interleaved layout for tensor type " + std::string(ggml_type_name(type)));
  }
  if (n_cols <= 0 || n_cols % tile_columns(type) != 0) {
    throw std::invalid_argument("interleaved " + std::string(ggml_type_name(type)) + " rows need a multiple of " +
                                std::to_string(tile_columns(type)) + " columns, not " + std::to_string(n_cols));
  }
}

void require_row_range(int64_t row_begin, int64_t row_end) {
  if (row_begin < 0 || row_end < row_begin || row_begin % kInterleavedRows != 0 || row_end % kInterleavedRows != 0) {
    throw std::invalid_argument("interleaved row range [" + std::to_string(row_begin) + ", " + std::to_string(row_end) +
                                ") is not in whole groups of 16 rows");
  }
}

}  // namespace

bool interleaved_layout_exists(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return true;
    default: return false;
  }
}

bool interleaved_available(GgmlType type, int64_t n_rows, int64_t n_cols) {
  return interleaved_layout_exists(type) && active_simd_level() == SimdLevel::Avx512Vnni && n_rows > 0 &&
         n_rows % kInterleavedRows == 0 && n_cols > 0 && n_cols % tile_columns(type) == 0 &&
         detail::interleaved_kernel_avx512(type, active_weight_prefetch()) != nullptr;
}

size_t interleaved_tile_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return sizeof(TileQ4_0);
    case GgmlType::Q8_0: return sizeof(TileQ8_0);
    case GgmlType::Q4_K: return sizeof(TileQ4_K);
    case GgmlType::Q5_K: return sizeof(TileQ5_K);
    case GgmlType::Q6_K: return sizeof(TileQ6_K);
    default: throw std::invalid_argument("no interleaved layout for tensor type " + std::string(ggml_type_name(type)));
  }
}

size_t interleaved_bytes(GgmlType type, int64_t n_rows, int64_t n_cols) {
  require_layout(type, n_cols);
  require_row_range(0, n_rows);
  return static_cast<size_t>(n_rows / kInterleavedRows) * static_cast<size_t>(n_cols / tile_columns(type)) *
         interleaved_tile_bytes(type);
}

void interleave_rows(GgmlType type, const void* src, size_t src_row_bytes, int64_t n_cols, int64_t row_begin,
                     int64_t row_end, void* dst) {
  require_layout(type, n_cols);
  require_row_range(row_begin, row_end);
  const int64_t nb = n_cols / tile_columns(type);
  const size_t tile_bytes = interleaved_tile_bytes(type);
  const auto* in = static_cast<const uint8_t*>(src);
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t g = row_begin / kInterleavedRows; g < row_end / kInterleavedRows; ++g) {
    for (int64_t i = 0; i < nb; ++i) {
      uint8_t* tile = out + static_cast<size_t>(g * nb + i) * tile_bytes;
      const auto interleave = [&](auto block_type, auto& tile_ref) {
        using Block = typename decltype(block_type)::type;
        const Block* rows[16];
        for (int r = 0; r < 16; ++r) rows[r] = reinterpret_cast<const Block*>(in + (16 * g + r) * src_row_bytes) + i;
        if constexpr (std::is_same_v<Block, BlockQ4_0>) {
          interleave_q4_0(rows, tile_ref);
        } else if constexpr (std::is_same_v<Block, BlockQ8_0>) {
          interleave_q8_0(rows, tile_ref);
        } else if constexpr (std::is_same_v<Block, BlockQ6_K>) {
          interleave_q6_k(rows, tile_ref);
        } else {
          interleave_q45_k(rows, tile_ref);
        }
      };
      if (type == GgmlType::Q4_0) {
        interleave(std::type_identity<BlockQ4_0>{}, *reinterpret_cast<TileQ4_0*>(tile));
      } else if (type == GgmlType::Q8_0) {
        interleave(std::type_identity<BlockQ8_0>{}, *reinterpret_cast<TileQ8_0*>(tile));
      } else if (type == GgmlType::Q4_K) {
        interleave(std::type_identity<BlockQ4_K>{}, *reinterpret_cast<TileQ4_K*>(tile));
      } else if (type == GgmlType::Q5_K) {
        interleave(std::type_identity<BlockQ5_K>{}, *reinterpret_cast<TileQ5_K*>(tile));
      } else {
        interleave(std::type_identity<BlockQ6_K>{}, *reinterpret_cast<TileQ6_K*>(tile));
      }
    }
  }
}

void deinterleave_row(GgmlType type, const void* interleaved, int64_t n_cols, int64_t row, void* dst_row) {
  require_layout(type, n_cols);
  const int64_t nb = n_cols / tile_columns(type), g = row / kInterleavedRows;
  const int r = static_cast<int>(row % kInterleavedRows);
  const size_t tile_bytes = interleaved_tile_bytes(type);
  const auto* in = static_cast<const uint8_t*>(interleaved);
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* tile = in + static_cast<size_t>(g * nb + i) * tile_bytes;
    if (type == GgmlType::Q4_0) {
      deinterleave_q4_0(*reinterpret_cast<const TileQ4_0*>(tile), r, static_cast<BlockQ4_0*>(dst_row)[i]);
    } else if (type == GgmlType::Q8_0) {
      deinterleave_q8_0(*reinterpret_cast<const TileQ8_0*>(tile), r, static_cast<BlockQ8_0*>(dst_row)[i]);
    } else if (type == GgmlType::Q4_K) {
      deinterleave_q45_k(*reinterpret_cast<const TileQ4_K*>(tile), r, static_cast<BlockQ4_K*>(dst_row)[i]);
    } else if (type == GgmlType::Q5_K) {
      deinterleave_q45_k(*reinterpret_cast<const TileQ5_K*>(tile), r, static_cast<BlockQ5_K*>(dst_row)[i]);
    } else {
      deinterleave_q6_k(*reinterpret_cast<const TileQ6_K*>(tile), r, static_cast<BlockQ6_K*>(dst_row)[i]);
    }
  }
}

// Chosen with the kernels streaming a large Q4_K matrix from memory, each prefetch alternating in one process
// (docs/notes/2026-11-27-cpu-weight-prefetch.md): on Zen 4 no software prefetch is fastest, since prefetchnta and
// prefetcht0/t1 take L1 miss buffers the hardware's L2 streamer would have used; on Zen 5 prefetchnta is; on an
// Intel Xeon (family 6 model 207) prefetcht0 is, far ahead of none, and prefetchnta is the slowest.
WeightPrefetch weight_prefetch_for(std::string_view cpu_vendor, unsigned cpu_family) {
  if (cpu_vendor != "AuthenticAMD") return WeightPrefetch::L1;
  return cpu_family <= 0x19 ? WeightPrefetch::None : WeightPrefetch::NonTemporal;
}

WeightPrefetch weight_prefetch_for_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx)) {
    char vendor[12];
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
      // The extended family counts only on top of base family 0xF (AMD's 0x17 Zen 2, 0x19 Zen 3 and 4, 0x1A Zen 5).
      const unsigned base = (eax >> 8) & 0xF;
      const unsigned family = base == 0xF ? base + ((eax >> 20) & 0xFF) : base;
      return weight_prefetch_for(std::string_view(vendor, sizeof vendor), family);
    }
  }
#endif
  return weight_prefetch_for("", 0);
}

WeightPrefetch active_weight_prefetch() {
  static const WeightPrefetch prefetch = [] {
    // util::env_options has checked that TESSERA_PREFETCH is empty or one of the names.
    for (WeightPrefetch p : {WeightPrefetch::None, WeightPrefetch::NonTemporal, WeightPrefetch::L1}) {
      if (weight_prefetch_name(p) == util::env_options().prefetch) return p;
    }
    return weight_prefetch_for_cpu();
  }();
  return prefetch;
}

std::string_view weight_prefetch_name(WeightPrefetch prefetch) {
  switch (prefetch) {
    case WeightPrefetch::None: return "none";
    case WeightPrefetch::NonTemporal: return "nta";
    case WeightPrefetch::L1: return "l1";
  }
  return "?";
}

void gemm_interleaved(GgmlType type, const void* interleaved, int64_t n_cols, int64_t row_begin, int64_t row_end,
                      const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy,
                      WeightPrefetch prefetch) {
  require_layout(type, n_cols);
  require_row_range(row_begin, row_end);
  const detail::InterleavedGemmKernel kernel =
      active_simd_level() == SimdLevel::Avx512Vnni ? detail::interleaved_kernel_avx512(type, prefetch) : nullptr;
  if (!kernel) throw std::logic_error("gemm_interleaved called without an interleaved kernel for this CPU");
  if (row_end == row_begin || n_tokens <= 0) return;
  kernel(interleaved, n_cols, row_begin, row_end, xq, xq_row_bytes, n_tokens, y, ldy);
}

}  // namespace tessera::quant
