// Batched quantized matmul for steps of many sequences (2 to a few hundred tokens): y[t] = W x[t] (or +=) on the
// tensor cores, with W read in its block format, each weight once per block of up to 128 tokens, and decoded to f16
// in registers (matmul_batch_kernel.cuh says why this design; matmul_batch_tiles.h has the tiles). The alternative
// for these steps is gemm() (kernels.h), which writes a dequantized f16 copy of W first and hands it to cuBLAS.
// All pointers are device pointers; every function only enqueues work on `stream` (and checks the launch).
#pragma once

#include "backend/cuda/kernels.h"
#include "backend/cuda/matmul_batch_tiles.h"

namespace tessera::cuda {

// Q4_0, Q8_0, Q4_K, Q5_K and Q6_K matrices whose rows are whole 256-column tiles; the others take gemm().
bool matmul_batch_supports(GgmlType type);
bool matmul_batch_supports(const DeviceMatrix& w);

// The tiling of W x for n_tokens tokens on the current device (plan_matmul_batch with its SM count and shared
// memory); tile_tokens == 0 when its shared memory takes no tile of w's type. Plans are plain values: compute one
// per (matrix shape, n_tokens) and reuse it.
MatmulBatchPlan matmul_batch_plan(const DeviceMatrix& w, int n_tokens);
// f32 scratch the plan needs (its K splits' partial sums); 0 for one split.
size_t matmul_batch_workspace_floats(const MatmulBatchPlan& plan, const DeviceMatrix& w, int n_tokens);

// Raises every matmul_batch kernel's shared-memory limit to the device's maximum; call once before capturing a
// graph that launches matmul_batch (matmul_batch does it on first use otherwise).
void matmul_batch_prepare();

// y[t * ldy + r] = sum_c W[r][c] x16[t * ldx + c] (accumulate: y += ..., the fused residual add) for t < n_tokens:
// W decoded to f16, f32 accumulation. x16 is f16 (convert_f32_to_f16 makes it from f32 rows; RMSNorm, SwiGLU and
// prompt attention write it as a side output), 16-byte aligned, ldx a multiple of 8. plan: matmul_batch_plan(w,
// n_tokens) or any plan_matmul_batch plan of this device; workspace: matmul_batch_workspace_floats(...) floats, or
// null when that is 0. With more than one split a second kernel sums the partial results, in a fixed order.
void matmul_batch(const DeviceMatrix& w, const __half* x16, int64_t ldx, int n_tokens, float* y, int64_t ldy,
                  bool accumulate, const MatmulBatchPlan& plan, float* workspace, cudaStream_t stream);

}  // namespace tessera::cuda
