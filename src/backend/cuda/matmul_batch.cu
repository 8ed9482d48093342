// Host side of the batched quantized matmul (matmul_batch.h): checks, the plan on the current device, the launch of
// the type's kernel (matmul_batch_<type>.cu) and, for split K, the kernel that sums the splits.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/matmul_batch.h"

namespace tessera::cuda {
namespace {

constexpr int kSumThreads = 256;

// y[t * ldy + r] (+)= the sum over the splits of partials[split][t][r], split by split (the same order every step).
__global__ void sum_splits_kernel(const float* __restrict__ partials, int splits, int64_t n_rows, int n_tokens,
                                  float* __restrict__ y, int64_t ldy, int accumulate) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int64_t n = n_rows * n_tokens;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kSumThreads + threadIdx.x;
  if (i >= n) return;
  float sum = 0;
  for (int s = 0; s < splits; ++s) sum += partials[s * n + i];
  float* const out = y + (i / n_rows) * ldy + i % n_rows;
  *out = accumulate ? *out + sum : sum;
}

struct Prepare {
  template <GgmlType T>
  void operator()() const {
    prepare_matmul_batch_kernels<T>();
  }
};

struct Launch {
  const MatmulBatchArgs& args;
  const MatmulBatchPlan& plan;
  cudaStream_t stream;
  template <GgmlType T>
  void operator()() const {
    launch_matmul_batch_kernel<T>(args, plan, stream);
  }
};

bool plan_covers(const MatmulBatchPlan& plan, int64_t n_kb) {
  const bool tile =
      plan.tile_tokens == 16 || plan.tile_tokens == 32 || plan.tile_tokens == 64 || plan.tile_tokens == 128;
  return tile && plan.stages >= 2 && plan.stages <= kMaxTileStages && plan.splits >= 1 && plan.kb_per_split >= 1 &&
         static_cast<int64_t>(plan.kb_per_split) * plan.splits >= n_kb &&
         static_cast<int64_t>(plan.kb_per_split) * (plan.splits - 1) < n_kb;
}

}  // namespace

bool matmul_batch_supports(GgmlType type) { return has_tiles(type); }

bool matmul_batch_supports(const DeviceMatrix& w) {
  return has_tiles(w.type) && w.n_rows > 0 && w.n_cols > 0 && w.n_cols % kTileCols == 0 && w.row_bytes % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

MatmulBatchPlan matmul_batch_plan(const DeviceMatrix& w, int n_tokens) {
  return plan_matmul_batch(w.type, w.n_rows, w.n_cols, n_tokens, current_device_limits());
}

size_t matmul_batch_workspace_floats(const MatmulBatchPlan& plan, const DeviceMatrix& w, int n_tokens) {
  if (plan.splits <= 1) return 0;
  return static_cast<size_t>(plan.splits) * static_cast<size_t>(n_tokens) * static_cast<size_t>(w.n_rows);
}

void matmul_batch_prepare() {
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    dispatch_tile_type(type, Prepare{});
  }
}

void matmul_batch(const DeviceMatrix& w, const __half* x16, int64_t ldx, int n_tokens, float* y, int64_t ldy,
                  bool accumulate, const MatmulBatchPlan& plan, float* workspace, cudaStream_t stream) {
  if (n_tokens <= 0) return;
  if (!matmul_batch_supports(w)) {
    throw std::runtime_error("matmul_batch: no kernel for a " + std::string(ggml_type_name(w.type)) + " matrix of " +
                             std::to_string(w.n_cols) + " columns");
  }
  const int64_t n_kb = w.n_cols / kTileCols;
  if (!plan_covers(plan, n_kb)) throw std::runtime_error("matmul_batch: the plan does not fit this matrix");
  if (ldx < w.n_cols || ldx % 8 != 0 || reinterpret_cast<uintptr_t>(x16) % 16 != 0 || ldy < w.n_rows) {
    throw std::runtime_error(
        "matmul_batch: x16 must be 16-byte aligned rows of ldx >= n_cols (a multiple of 8) "
        "and y rows of ldy >= n_rows");
  }
  const size_t workspace_floats = matmul_batch_workspace_floats(plan, w, n_tokens);
  if (workspace_floats > 0 && workspace == nullptr)
    throw std::runtime_error("matmul_batch: the plan needs a workspace");

  MatmulBatchArgs args;
  args.w = w.data;
  args.row_bytes = static_cast<int64_t>(w.row_bytes);
  args.n_rows = w.n_rows;
  args.n_kb = static_cast<int>(n_kb);
  args.x = x16;
  args.ldx = ldx;
  args.n_tokens = n_tokens;
  args.y = y;
  args.ldy = ldy;
  args.accumulate = accumulate ? 1 : 0;
  args.partials = workspace;
  args.kb_per_split = plan.kb_per_split;
  args.stages = plan.stages;
  dispatch_tile_type(w.type, Launch{args, plan, stream});
  if (plan.splits > 1) {
    const int64_t n = w.n_rows * n_tokens;
    launch_chained("sum_splits_kernel", sum_splits_kernel,
                   dim3(static_cast<unsigned>((n + kSumThreads - 1) / kSumThreads)), dim3(kSumThreads), 0, stream,
                   static_cast<const float*>(workspace), plan.splits, w.n_rows, n_tokens, y, ldy, args.accumulate);
  }
}

}  // namespace tessera::cuda
