// The batched matmul kernels for Q5_K weights (matmul_batch_kernel.cuh), in a translation unit of their own.
#include "backend/cuda/matmul_batch_kernel.cuh"

namespace tessera::cuda {

template void prepare_matmul_batch_kernels<GgmlType::Q5_K>();
template void launch_matmul_batch_kernel<GgmlType::Q5_K>(const MatmulBatchArgs&, const MatmulBatchPlan&, cudaStream_t);

}  // namespace tessera::cuda
