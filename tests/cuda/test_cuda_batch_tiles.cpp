// The index math of the batched kernels, on the host (these tests need no GPU): which bytes of a device row the
// matmul tiles copy and how a lane decodes them, against quant::dequantize_row_ref; the shared-memory bank patterns
// the tile strides were chosen for; the matmul and attention planners; paged key slots and key splits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/device_layout.h"
#include "backend/cuda/matmul_batch_tiles.h"
#include "backend/cuda/paged_attention.h"
#include "cuda/batch_test_util.h"

namespace tessera::cuda {
namespace {

// Copies each k-tile of each row as the kernel does (Tile<T>::unit_offset into the device layout) and decodes every
// lane's columns 16kk + 4t + i; they must be the reference's values at those columns.
template <GgmlType T>
void expect_tiles_decode_reference(int64_t n_rows, int64_t n_kb, uint32_t seed) {
  const int64_t n_cols = n_kb * kTileCols;
  const std::vector<uint8_t> file = test::random_blocks(T, n_rows, n_cols, seed);
  const std::vector<float> want = test::dequantize_rows(T, file, n_rows, n_cols);
  const size_t stride = device_row_bytes(T, n_cols);
  std::vector<uint8_t> device(stride * static_cast<size_t>(n_rows));
  to_device_layout(T, file.data(), n_rows, n_cols, device.data());
  float max_abs = 0;
  for (const float v : want) max_abs = std::max(max_abs, std::fabs(v));

  alignas(16) uint8_t raw[Tile<T>::kStride];
  size_t bad = 0, checked = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t kb = 0; kb < n_kb; ++kb) {
      for (int u = 0; u < Tile<T>::kUnits; ++u) {
        const int64_t offset = Tile<T>::unit_offset(u, kb, n_kb);
        ASSERT_EQ(offset % kTileUnitBytes, 0) << ggml_type_name(T) << " unit " << u;
        ASSERT_LE(static_cast<size_t>(offset + kTileUnitBytes), stride) << ggml_type_name(T) << " unit " << u;
        std::memcpy(raw + kTileUnitBytes * u, device.data() + r * stride + offset, kTileUnitBytes);
      }
      for (int t = 0; t < 4; ++t) {
        for (int kk = 0; kk < kTileCols / 16; ++kk) {
          float v[4];
          Tile<T>::decode(raw, t, kb, kk, v);
          for (int i = 0; i < 4; ++i) {
            const float expected = want[r * n_cols + kb * kTileCols + 16 * kk + 4 * t + i];
            // Equal but for a contracted multiply-add (the device fuses them; the host reference does not).
            bad += !(std::fabs(v[i] - expected) <= 1e-6f * max_abs);
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, static_cast<size_t>(n_rows * n_cols));
  EXPECT_EQ(bad, 0u) << ggml_type_name(T) << ": " << bad << " of " << checked << " values differ";
}

// Nine k-tiles: Q6_K's d values of k-tiles 8 and up are in the second 16 bytes of its d section.
TEST(MatmulBatchTiles, LanesDecodeTheReferenceValues) {
  expect_tiles_decode_reference<GgmlType::Q4_0>(3, 9, 1);
  expect_tiles_decode_reference<GgmlType::Q8_0>(3, 9, 2);
  expect_tiles_decode_reference<GgmlType::Q4_K>(3, 9, 3);
  expect_tiles_decode_reference<GgmlType::Q5_K>(3, 9, 4);
  expect_tiles_decode_reference<GgmlType::Q6_K>(3, 9, 5);
  expect_tiles_decode_reference<GgmlType::Q6_K>(2, 1, 6);  // one k-tile: the row's only d
}

// In a k-step, lane 4g + t reads a 4-byte word at the same offset plus 4t in row g of its m-tile (rows g + 8 in a
// second load): with each type's stride the 32 lanes hit 32 different banks.
TEST(MatmulBatchTiles, WeightWordsOfAWarpHitDistinctBanks) {
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    const int stride = tile_stride(type);
    EXPECT_EQ(stride % kTileUnitBytes, 0) << ggml_type_name(type);  // cp.async destinations
    std::set<int> banks;
    for (int g = 0; g < 8; ++g) {
      for (int t = 0; t < 4; ++t) banks.insert((g * stride / 4 + t) % 32);
    }
    EXPECT_EQ(banks.size(), 32u) << ggml_type_name(type) << " stride " << stride;
  }
}

// A B fragment is 8 bytes at token g, column 16kk + 4t of the activation tile; the 16 lanes of a half-warp (g < 4)
// must cover all 32 banks once.
TEST(MatmulBatchTiles, ActivationLoadsOfAHalfWarpHitDistinctBanks) {
  for (int kk = 0; kk < kTileCols / 16; ++kk) {
    std::set<int> banks;
    for (int g = 0; g < 4; ++g) {
      for (int t = 0; t < 4; ++t) {
        const int word = (g * kXTileStride + 2 * (16 * kk + 4 * t)) / 4;
        banks.insert(word % 32);
        banks.insert((word + 1) % 32);
      }
    }
    EXPECT_EQ(banks.size(), 32u) << "k-step " << kk;
  }
}

const DeviceLimits kH100{132, 232448, 233472, 1024};
const DeviceLimits kA100{108, 166912, 167936, 1024};
const DeviceLimits kL4{58, 101376, 102400, 1024};

bool fits(GgmlType type, int tile, int stages, int blocks, const DeviceLimits& l) {
  const int64_t bytes = static_cast<int64_t>(stages) * tile_stage_bytes(type, tile);
  return bytes <= l.max_shared_per_block && blocks * (bytes + l.reserved_shared_per_block) <= l.shared_per_sm;
}

// Llama-2-7B and TinyLlama shapes, and a small odd one, at the test's token counts, on three GPUs' limits.
TEST(MatmulBatchTiles, PlansFitTheDeviceAndCoverEveryTile) {
  struct Shape {
    int64_t n_rows, n_cols;
  };
  const Shape shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {32000, 4096}, {2048, 2048},
                          {256, 2048},  {5632, 2048},  {2048, 5632},  {45, 768}};
  for (const DeviceLimits& limits : {kH100, kA100, kL4}) {
    for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
      for (const Shape shape : shapes) {
        for (const int n_tokens : {1, 2, 7, 8, 9, 31, 64, 129, 256, 512}) {
          const MatmulBatchPlan plan = plan_matmul_batch(type, shape.n_rows, shape.n_cols, n_tokens, limits);
          const std::string what = std::string(ggml_type_name(type)) + " " + std::to_string(shape.n_rows) + "x" +
                                   std::to_string(shape.n_cols) + " tokens " + std::to_string(n_tokens) + " on " +
                                   std::to_string(limits.sm_count) + " SMs";
          // The token tile: the smallest that holds the tokens, halved while two stages of it do not fit a block.
          int tile = n_tokens <= 16 ? 16 : n_tokens <= 32 ? 32 : n_tokens <= 64 ? 64 : 128;
          while (tile > 16 && !fits(type, tile, 2, 1, limits)) tile /= 2;
          ASSERT_EQ(plan.tile_tokens, tile) << what;
          // The deepest pipeline with two blocks per SM, else with one.
          const int blocks = fits(type, tile, 2, 2, limits) ? 2 : 1;
          int stages = kMaxTileStages;
          while (!fits(type, tile, stages, blocks, limits)) --stages;
          EXPECT_EQ(plan.blocks_per_sm, blocks) << what;
          EXPECT_EQ(plan.stages, stages) << what;
          // Every k-tile in exactly one split, none empty.
          const int64_t n_kb = shape.n_cols / kTileCols;
          ASSERT_GE(plan.kb_per_split, 1) << what;
          EXPECT_GE(static_cast<int64_t>(plan.kb_per_split) * plan.splits, n_kb) << what;
          EXPECT_LT(static_cast<int64_t>(plan.kb_per_split) * (plan.splits - 1), n_kb) << what;
          // Splits only while the row and token blocks are less than a wave, and then at least half a wave.
          const int64_t tiles = (shape.n_rows + kTileRows - 1) / kTileRows * ((n_tokens + tile - 1) / tile);
          const int64_t wave = static_cast<int64_t>(limits.sm_count) * blocks;
          if (tiles >= wave) {
            EXPECT_EQ(plan.splits, 1) << what;
          } else {
            EXPECT_GE(2 * tiles * plan.splits, std::min(wave, tiles * n_kb)) << what;
          }
        }
      }
    }
  }
}

TEST(MatmulBatchTiles, PlansKeepTheTileCap) {
  for (const int cap : {16, 32, 64}) {
    const MatmulBatchPlan plan = plan_matmul_batch(GgmlType::Q4_K, 4096, 4096, 256, kH100, cap);
    EXPECT_EQ(plan.tile_tokens, cap);
  }
  EXPECT_EQ(plan_matmul_batch(GgmlType::Q4_K, 4096, 4096, 20, kH100, 64).tile_tokens, 32);
}

TEST(MatmulBatchTiles, PlansRefuseOtherTypesAndWidths) {
  EXPECT_EQ(plan_matmul_batch(GgmlType::F16, 64, 256, 9, kH100).tile_tokens, 0);
  EXPECT_EQ(plan_matmul_batch(GgmlType::Q3_K, 64, 256, 9, kH100).tile_tokens, 0);
  EXPECT_EQ(plan_matmul_batch(GgmlType::Q4_0, 64, 96, 9, kH100).tile_tokens, 0);  // not whole 256-column tiles
  EXPECT_EQ(plan_matmul_batch(GgmlType::Q4_K, 64, 256, 0, kH100).tile_tokens, 0);
  EXPECT_EQ(plan_matmul_batch(GgmlType::Q4_K, 64, 256, 9, DeviceLimits{8, 16384, 16384, 0}).tile_tokens, 0);
}

// ---- paged attention --------------------------------------------------------------------------------------------

TEST(PagedAttentionIndex, KeySlotsFollowTheBlockTable) {
  for (const int block_shift : {4, 5, 6}) {
    const int block_size = 1 << block_shift, n_blocks = 40;
    std::vector<int32_t> table(n_blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(block_shift));
    // The slot list the engine keeps per sequence (position -> slot), expanded from its blocks.
    std::vector<int64_t> slots;
    for (const int32_t block : table) {
      for (int i = 0; i < block_size; ++i) slots.push_back(static_cast<int64_t>(block) * block_size + i);
    }
    for (int key = 0; key < n_blocks * block_size; ++key) {
      ASSERT_EQ(paged_key_slot(table.data(), block_shift, key), slots[key]) << "block size " << block_size;
    }
  }
}

TEST(PagedAttentionIndex, SplitsPartitionTheVisibleKeys) {
  for (const int n_keys : {0, 1, 15, 16, 17, 100, 4097}) {
    for (const int first_key : {-3, 0, 1, 50, 4097, 5000}) {
      for (const int n_splits : {1, 2, 3, 7, 32}) {
        const int first = std::max(first_key, 0), count = std::max(n_keys - first, 0);
        int at = first;
        for (int s = 0; s < n_splits; ++s) {
          const KeyRange r = split_key_range(first_key, n_keys, n_splits, s);
          ASSERT_EQ(r.begin, at) << n_keys << " keys from " << first_key << ", split " << s;
          ASSERT_GE(r.end, r.begin);
          ASSERT_LE(r.end - r.begin, (count + n_splits - 1) / n_splits);
          at = r.end;
        }
        EXPECT_EQ(at, first + count) << n_keys << " keys from " << first_key;
      }
    }
  }
}

TEST(PagedAttentionIndex, SplitsOnlyWhereTheBlocksLeaveSmsIdle) {
  const AttentionParams llama7b{32, 32, 128, KvFormat::F16, KvFormat::F16}, tinyllama{32, 4, 64, KvFormat::F16, KvFormat::F16};
  // One sequence of 4096 keys: 32 (7B) or 4 (TinyLlama) blocks for 132 SMs; splits of at least 128 keys.
  for (const AttentionParams& p : {llama7b, tinyllama}) {
    const int splits = plan_paged_attention_splits(p, 1, 4096, 132);
    EXPECT_GT(splits, 1);
    EXPECT_EQ(splits & (splits - 1), 0);
    EXPECT_GE(4096 / splits, 128);
  }
  EXPECT_EQ(plan_paged_attention_splits(llama7b, 128, 4096, 132), 1);  // 4096 blocks already
  EXPECT_EQ(plan_paged_attention_splits(tinyllama, 1, 200, 132), 1);   // too short to split
  EXPECT_EQ(plan_paged_attention_splits(tinyllama, 1, 1 << 20, 132), 32);
}

TEST(PagedAttentionIndex, SupportsRowsOfWhole16BytesUpTo512) {
  EXPECT_TRUE(paged_attention_supported(AttentionParams{32, 4, 64, KvFormat::F16, KvFormat::F16}));
  EXPECT_TRUE(paged_attention_supported(AttentionParams{32, 32, 128, KvFormat::F32, KvFormat::F32}));
  EXPECT_TRUE(paged_attention_supported(AttentionParams{6, 2, 80, KvFormat::F16, KvFormat::F16}));
  EXPECT_TRUE(paged_attention_supported(AttentionParams{8, 1, 256, KvFormat::F16, KvFormat::F16}));
  EXPECT_FALSE(paged_attention_supported(AttentionParams{8, 1, 256, KvFormat::F32, KvFormat::F32}));  // 1024-byte rows
  EXPECT_FALSE(paged_attention_supported(AttentionParams{8, 8, 36, KvFormat::F16, KvFormat::F16}));    // 72-byte rows
  EXPECT_FALSE(paged_attention_supported(AttentionParams{6, 4, 64, KvFormat::F16, KvFormat::F16}));    // 6 heads over 4 KV heads
  // Quantized caches (two planes per layer) and keys and values in different formats are not read here.
  EXPECT_FALSE(paged_attention_supported(AttentionParams{32, 4, 64, KvFormat::Q8_0, KvFormat::Q8_0}));
  EXPECT_FALSE(paged_attention_supported(AttentionParams{32, 4, 64, KvFormat::F16, KvFormat::F32}));
}

}  // namespace
}  // namespace tessera::cuda
