// plan_matmul_batch (matmul_batch_tiles.h): host-side only, so that its choices are tested without a GPU.
#include <algorithm>

#include "backend/cuda/matmul_batch_tiles.h"

namespace tessera::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The deepest pipeline with which `blocks` blocks of this tile share an SM; 0 when none does.
int stages_for(GgmlType type, int tile_tokens, int blocks, const DeviceLimits& limits) {
  const int64_t stage = tile_stage_bytes(type, tile_tokens);
  for (int stages = kMaxTileStages; stages >= 2; --stages) {
    const int64_t bytes = stages * stage;
    if (bytes <= limits.max_shared_per_block &&
        blocks * (bytes + limits.reserved_shared_per_block) <= limits.shared_per_sm) {
      return stages;
    }
  }
  return 0;
}

}  // namespace

MatmulBatchPlan plan_matmul_batch(GgmlType type, int64_t n_rows, int64_t n_cols, int n_tokens,
                                  const DeviceLimits& limits, int max_tile_tokens) {
  MatmulBatchPlan plan;
  if (!has_tiles(type) || n_rows <= 0 || n_cols <= 0 || n_cols % kTileCols != 0 || n_tokens <= 0) return plan;
  int tile = n_tokens <= 16 ? 16 : n_tokens <= 32 ? 32 : n_tokens <= 64 ? 64 : 128;
  while (tile > 16 && tile > max_tile_tokens) tile /= 2;
  for (; tile >= 16; tile /= 2) {
    // Two blocks per SM give each SMSP two warps to switch between (four at 128 tokens, which have 8 warps).
    for (const int blocks : {2, 1}) {
      const int stages = stages_for(type, tile, blocks, limits);
      if (stages > 0) {
        plan.tile_tokens = tile;
        plan.stages = stages;
        plan.blocks_per_sm = blocks;
        break;
      }
    }
    if (plan.tile_tokens != 0) break;
  }
  if (plan.tile_tokens == 0) return plan;

  const int64_t n_kb = n_cols / kTileCols;
  const int64_t tiles = ceil_div(n_rows, kTileRows) * ceil_div(n_tokens, plan.tile_tokens);
  const int64_t wave = static_cast<int64_t>(std::max(limits.sm_count, 1)) * plan.blocks_per_sm;
  const int64_t wanted = tiles >= wave ? 1 : std::min(n_kb, ceil_div(wave, tiles));
  plan.kb_per_split = static_cast<int>(ceil_div(n_kb, wanted));
  plan.splits = static_cast<int>(ceil_div(n_kb, plan.kb_per_split));  // none left empty
  return plan;
}

}  // namespace tessera::cuda
