// The kernel of the batched quantized matmul (matmul_batch.h), a template over the weight type and the block's token
// count, instantiated once per type (matmul_batch_<type>.cu: each type its own translation unit, so they compile in
// parallel). The tiles and their index math are in matmul_batch_tiles.h.
//
// Why f16 mma on weights decoded in registers, not int8 mma on Q8 activations (llama.cpp's mmq): with int8 the
// per-32-value scales of weights and activations are applied to every (row, token) int32 sum of each sub-block,
// a cost that grows with the token count (at 32 tokens it passes the cost of decoding each weight to f16 once),
// while decoding is paid once per weight whatever the token count; the f16 weights are the values of
// dequantize_rows_f16, and the f16 activations are what RMSNorm, SwiGLU and prompt attention already write for the
// prompt GEMM. Decoding straight into the A fragments (each lane the four columns its fragment holds) writes no f16
// tile to shared memory and reads none back.
//
// A block: kTileRows rows of W x kTokens tokens, over its split's k-tiles. Per k-tile, cp.async copies the rows'
// raw bytes and the tokens' f16 columns into a stage of shared memory (`stages` deep, the weight copies of the first
// stages issued before the wait for the previous kernel); each warp decodes its m-tiles' weights k-step by k-step
// into A fragments and multiplies them with the B fragments of every n-tile of 8 tokens.
#pragma once

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/matmul_batch_tiles.h"
#include "backend/cuda/mma.cuh"

namespace tessera::cuda {

// A minimum of one block per SM lets ptxas take the registers it wants (it held some instances to 128 and spilled);
// shared memory allows at most two blocks per SM anyway.
template <GgmlType T, int kTokens>
__global__ void __launch_bounds__(32 * tile_shape(kTokens).warps, 1) matmul_batch_kernel(const MatmulBatchArgs a) {
  constexpr TileShape kShape = tile_shape(kTokens);
  constexpr int kThreads = 32 * kShape.warps, kMTiles = kShape.m_tiles, kNTiles = kTokens / 8;
  constexpr int kStride = Tile<T>::kStride, kUnits = Tile<T>::kUnits;
  constexpr int kWeightBytes = kTileRows * kStride;
  constexpr int kStageBytes = tile_stage_bytes(T, kTokens);
  extern __shared__ __align__(16) uint8_t smem[];  // [stages][rows' raw k-tile | tokens' f16 columns]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int tok0 = blockIdx.y * kTokens;
  const int kb_begin = blockIdx.z * a.kb_per_split;
  const int n_iter = min(a.n_kb, kb_begin + a.kb_per_split) - kb_begin;  // >= 1: no split is empty
  const int warp_row = warp * kMTiles * 16;

  // Rows past the matrix and tokens past the step are zeros (nothing read; their results are not stored).
  auto copy_weights = [&](int kb, int stage) {
    uint8_t* dst = smem + stage * kStageBytes;
    for (int i = tid; i < kTileRows * kUnits; i += kThreads) {
      const int r = i / kUnits, u = i % kUnits;
      const bool valid = row0 + r < a.n_rows;
      const uint8_t* src = a.w + (valid ? row0 + r : 0) * a.row_bytes + Tile<T>::unit_offset(u, kb, a.n_kb);
      copy_16_async_or_zeros(dst + r * kStride + kTileUnitBytes * u, src, valid);
    }
  };
  auto copy_activations = [&](int kb, int stage) {
    uint8_t* dst = smem + stage * kStageBytes + kWeightBytes;
    for (int i = tid; i < kTokens * kXTileUnits; i += kThreads) {
      const int n = i / kXTileUnits, u = i % kXTileUnits;
      const bool valid = tok0 + n < a.n_tokens;
      const __half* src = a.x + (valid ? tok0 + n : 0) * a.ldx + static_cast<int64_t>(kb) * kTileCols + 8 * u;
      copy_16_async_or_zeros(dst + n * kXTileStride + kTileUnitBytes * u, src, valid);
    }
  };

  // The weights do not depend on earlier kernels: the first stages' are on their way before the wait. The group of
  // stage 0 then holds all of them, which only delays stage 0 by the others' copies.
  const int prologue = min(a.stages - 1, n_iter);
  for (int s = 0; s < prologue; ++s) copy_weights(kb_begin + s, s);
  allow_next_kernel();
  wait_for_previous_kernel();
  for (int s = 0; s < a.stages - 1; ++s) {
    if (s < n_iter) copy_activations(kb_begin + s, s);
    commit_async_copies();  // empty groups too: every iteration then waits for the same count
  }

  float acc[kMTiles][kNTiles][4] = {};
  for (int it = 0; it < n_iter; ++it) {
    wait_async_copies_at_most(a.stages - 2);  // this iteration's k-tile has landed
    // All threads' copies of this k-tile are visible, and all threads are done with the stage the next copies
    // overwrite (the one of iteration it - 1).
    __syncthreads();
    const int next = it + a.stages - 1;
    if (next < n_iter) {
      copy_weights(kb_begin + next, next % a.stages);
      copy_activations(kb_begin + next, next % a.stages);
    }
    commit_async_copies();

    const uint8_t* const w_tile = smem + (it % a.stages) * kStageBytes;
    const uint8_t* const x_tile = w_tile + kWeightBytes;
    const int kb = kb_begin + it;
#pragma unroll
    for (int kk = 0; kk < kTileCols / 16; ++kk) {
      uint32_t a_frag[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        const uint8_t* const row = w_tile + (warp_row + mt * 16 + g) * kStride;
        float upper[4], lower[4];  // rows g and g + 8
        Tile<T>::decode(row, t, kb, kk, upper);
        Tile<T>::decode(row + 8 * kStride, t, kb, kk, lower);
        a_frag[mt][0] = pack_f16(upper[0], upper[1]);
        a_frag[mt][1] = pack_f16(lower[0], lower[1]);
        a_frag[mt][2] = pack_f16(upper[2], upper[3]);
        a_frag[mt][3] = pack_f16(lower[2], lower[3]);
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const uint2 b = *reinterpret_cast<const uint2*>(x_tile + (nt * 8 + g) * kXTileStride + 2 * (16 * kk + 4 * t));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) mma_m16n8k16(acc[mt][nt], a_frag[mt], b.x, b.y);
      }
    }
  }

  // C fragment: acc[.][.][e] is row g + 8 (e / 2), token 2t + e % 2 of its tile.
  const bool split = gridDim.z > 1;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = row0 + warp_row + mt * 16 + g + 8 * (e / 2);
        const int tok = tok0 + nt * 8 + 2 * t + e % 2;
        if (row >= a.n_rows || tok >= a.n_tokens) continue;
        const float v = acc[mt][nt][e];
        if (split) {
          a.partials[(static_cast<int64_t>(blockIdx.z) * a.n_tokens + tok) * a.n_rows + row] = v;
        } else {
          float* const out = a.y + tok * a.ldy + row;
          *out = a.accumulate ? *out + v : v;
        }
      }
    }
  }
}

template <GgmlType T, int kTokens>
void set_shared_limit() {
  static const bool configured = [] {
    int device = 0, limit = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)");
    check_cuda(
        cudaFuncSetAttribute(matmul_batch_kernel<T, kTokens>, cudaFuncAttributeMaxDynamicSharedMemorySize, limit),
        "cudaFuncSetAttribute(matmul_batch_kernel)");
    return true;
  }();
  (void)configured;
}

template <GgmlType T>
void prepare_matmul_batch_kernels() {
  set_shared_limit<T, 16>();
  set_shared_limit<T, 32>();
  set_shared_limit<T, 64>();
  set_shared_limit<T, 128>();
}

template <GgmlType T, int kTokens>
void launch_tile(const MatmulBatchArgs& a, const MatmulBatchPlan& plan, cudaStream_t stream) {
  set_shared_limit<T, kTokens>();
  const dim3 grid(static_cast<unsigned>((a.n_rows + kTileRows - 1) / kTileRows),
                  static_cast<unsigned>((a.n_tokens + kTokens - 1) / kTokens), static_cast<unsigned>(plan.splits));
  launch_chained("matmul_batch_kernel", matmul_batch_kernel<T, kTokens>, grid, dim3(32 * tile_shape(kTokens).warps),
                 static_cast<size_t>(plan.stages) * tile_stage_bytes(T, kTokens), stream, a);
}

template <GgmlType T>
void launch_matmul_batch_kernel(const MatmulBatchArgs& a, const MatmulBatchPlan& plan, cudaStream_t stream) {
  switch (plan.tile_tokens) {
    case 16:
      return launch_tile<T, 16>(a, plan, stream);
    case 32:
      return launch_tile<T, 32>(a, plan, stream);
    case 64:
      return launch_tile<T, 64>(a, plan, stream);
    default:
      return launch_tile<T, 128>(a, plan, stream);
  }
}

}  // namespace tessera::cuda
