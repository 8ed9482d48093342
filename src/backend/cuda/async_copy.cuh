// Asynchronous global -> shared copies (cp.async, sm_80 and newer): 16 bytes at a time, without passing through
// registers, so a kernel can put a tile's loads in flight and do other work before it waits for them.
#pragma once

#include <cstdint>

namespace tessera::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes; before sm_80 a plain copy through registers.
__device__ __forceinline__ void copy_16_async(void* shared, const void* global) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(shared)), "l"(global));
#else
  *static_cast<uint4*>(shared) = *static_cast<const uint4*>(global);
#endif
}

// 16 bytes, or 16 zero bytes when !valid (nothing is read then; global must still be a valid address). sm_80+.
__device__ __forceinline__ void copy_16_async_or_zeros(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(shared)), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}

// The copies issued since the last commit form one group.
__device__ __forceinline__ void commit_async_copies() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Until at most kPending of the committed groups are still in flight (then a barrier before other threads read).
template <int kPending>
__device__ __forceinline__ void wait_async_copies() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
#endif
}

// The same for a pipeline whose depth is chosen at run time: at most `pending` (0, 1 or 2; more counts as 2) groups
// left in flight.
__device__ __forceinline__ void wait_async_copies_at_most(int pending) {
  if (pending >= 2) {
    wait_async_copies<2>();
  } else if (pending == 1) {
    wait_async_copies<1>();
  } else {
    wait_async_copies<0>();
  }
}

}  // namespace tessera::cuda
