// Tensor-core building blocks (sm_80 and newer; used by the flash prompt attention): mma.sync m16n8k16 with f16
// operands and f32 accumulators, and ldmatrix to fetch its operands from shared memory.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 A/B and .f32 C/D), lane = 4 * g + t:
// - A (16 x 16, row-major): a0 = (row g, cols 2t, 2t+1), a1 = (row g+8, same cols), a2/a3 = the same rows, cols +8;
// - B (16 x 8, column-major): b0 = (rows 2t, 2t+1, col g), b1 = (rows 2t+8, 2t+9, col g);
// - C (16 x 8): c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1).
// ldmatrix hands lane 4g + t elements (g, 2t) and (g, 2t+1) of an 8 x 8 matrix whose rows are 16 bytes each
// (transposed: elements (2t, g) and (2t+1, g)), so a row-major [key][dim] tile gives the B fragments of K^T
// directly and, transposed, those of V.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/async_copy.cuh"  // shared_address

namespace tessera::cuda {

// Four 8 x 8 f16 matrices; lanes 8i..8i+7 give the 16-byte-aligned row addresses of matrix i, whose fragment
// comes back in r[i].
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const __half* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}
// The same, each matrix transposed.
__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const __half* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// d += a * b for one 16 x 8 tile.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to f16, the first in the low half (the lower column of a fragment pair).
__device__ __forceinline__ uint32_t pack_f16(float low, float high) {
  const __half2 h = __floats2half2_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Max and sum over the 4 lanes (t) that hold one row of a C fragment.
__device__ __forceinline__ float max_of_row(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 2));
}
__device__ __forceinline__ float sum_of_row(float v) {
  v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
  return v + __shfl_xor_sync(0xFFFFFFFFu, v, 2);
}

}  // namespace tessera::cuda
