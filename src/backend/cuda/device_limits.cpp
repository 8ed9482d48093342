#include "backend/cuda/device_limits.h"

#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"

namespace tessera::cuda {

DeviceLimits current_device_limits() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  DeviceLimits limits;
  const auto get = [&](cudaDeviceAttr attribute, int& value, const char* what) {
    check_cuda(cudaDeviceGetAttribute(&value, attribute, device), what);
  };
  get(cudaDevAttrMultiProcessorCount, limits.sm_count, "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)");
  get(cudaDevAttrMaxSharedMemoryPerBlockOptin, limits.max_shared_per_block,
      "cudaDeviceGetAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)");
  get(cudaDevAttrMaxSharedMemoryPerMultiprocessor, limits.shared_per_sm,
      "cudaDeviceGetAttribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor)");
  get(cudaDevAttrReservedSharedMemoryPerBlock, limits.reserved_shared_per_block,
      "cudaDeviceGetAttribute(cudaDevAttrReservedSharedMemoryPerBlock)");
  return limits;
}

}  // namespace tessera::cuda
