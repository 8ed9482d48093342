// Addressing the paged KV cache from device code: a sequence's blocks are a row of the step's block table, and
// its key j lives in cache slot blocks[j / block_size] * block_size + j % block_size (block_size = 1 << shift).
#pragma once

#include <cstdint>

namespace tessera::cuda {

__device__ __forceinline__ int32_t kv_slot(const int32_t* __restrict__ blocks, int j, int shift) {
  return (blocks[j >> shift] << shift) | (j & ((1 << shift) - 1));
}

}  // namespace tessera::cuda
