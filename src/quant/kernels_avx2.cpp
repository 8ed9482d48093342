// AVX2 kernels (compiled with -mavx2 -mfma -mf16c): integer dot products with maddubs.
#include "quant/kernels.h"

namespace tessera::quant::detail {

GemmKernel gemm_kernel_avx2(GgmlType) { return nullptr; }
QuantizeKernel activation_quantizer_avx2(GgmlType) { return nullptr; }

}  // namespace tessera::quant::detail
