// AVX-512 VNNI kernels: integer dot products with vpdpbusd.
#include "quant/kernels.h"

namespace tessera::quant::detail {

GemmKernel gemm_kernel_avx512(GgmlType) { return nullptr; }
QuantizeKernel activation_quantizer_avx512(GgmlType) { return nullptr; }

}  // namespace tessera::quant::detail
