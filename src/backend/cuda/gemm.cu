// Prompt processing: y = W x for many activation rows on the tensor cores. The weight is decoded to f16 in a
// scratch buffer (one matrix at a time, so no dequantized copy of the model is kept) and multiplied through
// cuBLAS with f32 accumulation. F32 weights (test models) stay f32 end to end.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {

void gemm(cublasHandle_t handle, const DeviceMatrix& w, const float* x32, const __half* x16, int64_t n_tokens, float* y,
          int64_t ldy, bool accumulate, __half* w_scratch, cudaStream_t stream) {
  TESSERA_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int m = static_cast<int>(w.n_rows), n = static_cast<int>(n_tokens), k = static_cast<int>(w.n_cols);
  // Column-major view: W is a k x m matrix (lda = k) used transposed; x is k x n; y is m x n (ldc = ldy).
  if (w.type == GgmlType::F32) {
    TESSERA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, CUDA_R_32F, k, x32,
                                      CUDA_R_32F, k, &beta, y, CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
    return;
  }
  dequantize_rows_f16(w, nullptr, w.n_rows, w_scratch, stream);
  TESSERA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w_scratch, CUDA_R_16F, k, x16,
                                    CUDA_R_16F, k, &beta, y, CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

}  // namespace tessera::cuda
