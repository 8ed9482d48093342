// The batched matmul kernels for Q4_K weights (matmul_batch_kernel.cuh), in a translation unit of their own.
#include "backend/cuda/matmul_batch_kernel.cuh"

namespace tessera::cuda {

template void prepare_matmul_batch_kernels<GgmlType::Q4_K>();
template void launch_matmul_batch_kernel<GgmlType::Q4_K>(const MatmulBatchArgs&, const MatmulBatchPlan&, cudaStream_t);

}  // namespace tessera::cuda
