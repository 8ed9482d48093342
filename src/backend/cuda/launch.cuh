// Programmatic dependent launch (sm_90) for the kernels of a decode step. A step is a chain of ~6 small kernels
// per layer, each needing the previous one's output, and with plain launches every kernel starts only after the
// previous one has drained, so launch latency and the first DRAM round trip add up kernel after kernel.
// Launched with launch_chained, a kernel may start while earlier ones still run: it does the work that needs
// nothing from earlier kernels (issuing its weight loads), calls allow_next_kernel(), which lets the next kernel
// in the stream launch and do the same, and then wait_for_previous_kernel() blocks until the previous kernel has
// finished and its writes are visible. So several kernels run ahead, as far as the SMs have room for their blocks
// (a kernel's dependents launch only once all its blocks have started, so the running kernel is never starved),
// and each has its first weights in flight when its turn comes: decode is clearly faster than when the next kernel
// may launch only after the wait (docs/notes/2026-11-27-cuda-kernels-run-ahead.md). Every kernel launched this
// way must wait before it reads anything an earlier kernel wrote or writes anything an earlier kernel reads
// (through the previous kernel's own wait, this covers all earlier kernels); before the wait it may only read what
// no kernel of the step writes. Both are no-ops for a kernel launched the plain way, and on GPUs before sm_90 (no
// programmatic launch: there launch_chained is a plain launch and stream order alone separates the kernels).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"

namespace tessera::cuda {

__device__ __forceinline__ void wait_for_previous_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether the current device has programmatic dependent launch (compute capability 9.0 or newer).
inline bool programmatic_launch_supported() {
  static const bool supported = [] {
    int device = 0, major = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
  }();
  return supported;
}

template <class... Params, class... Args>
void launch_chained(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                    cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic_launch_supported() ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), name);
}

}  // namespace tessera::cuda
