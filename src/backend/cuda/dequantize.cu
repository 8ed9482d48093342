// Whole-row decoding of block formats: token embedding lookups (to f32) and weight tiles for the tensor-core
// GEMM (to f16). One thread per chunk, staged in shared memory for coalesced stores.
#include <stdexcept>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dequant.cuh"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kDequantizeThreads = 128;

// Each thread decodes one chunk into shared memory, then the block's chunks, which are one contiguous run of `out`
// (chunk i of the launch goes to out + i * kChunk, whatever the source rows), are stored by consecutive threads
// with 16-byte stores. Storing each thread's chunk straight from registers put the lanes of a warp a chunk apart
// (128 bytes for Q4_K to f16): every store instruction touched 32 lines and the kernel wrote at a fraction of the
// bandwidth (docs/notes/2026-11-27-cuda-prompt-path-h200.md).
template <GgmlType T, class Out>
__global__ void __launch_bounds__(kDequantizeThreads)
    dequantize_rows_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int64_t n_cols,
                           const int32_t* __restrict__ row_ids, int64_t n_out, Out* __restrict__ out) {
  constexpr int kChunk = Chunk<T>::kSize;
  constexpr int kChunkBytes = kChunk * static_cast<int>(sizeof(Out));
  // 16 bytes of padding per slot put the 16-byte accesses of 8 consecutive threads in different banks.
  constexpr int kSlotBytes = kChunkBytes + 16;
  constexpr int kUnit = kChunkBytes % 16 == 0 ? 16 : 8;  // F32 to f16 chunks are 8 bytes
  using Unit = std::conditional_t<kUnit == 16, uint4, uint2>;
  static_assert(kChunk % 4 == 0);
  __shared__ __align__(16) uint8_t stage[kDequantizeThreads * kSlotBytes];

  const int64_t chunks_per_row = n_cols / kChunk;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDequantizeThreads;
  const int64_t i = first + threadIdx.x;
  if (i < chunks_per_row * n_out) {
    const int64_t r = i / chunks_per_row, c = i % chunks_per_row;
    const int64_t src_row = row_ids ? row_ids[r] : r;
    float v[kChunk];
    Chunk<T>::load(w + src_row * row_bytes, n_cols, c, v);
    uint8_t* slot = stage + threadIdx.x * kSlotBytes;
#pragma unroll
    for (int k = 0; k < kChunk; k += 4) {
      if constexpr (sizeof(Out) == 2) {
        const __half2 a = __floats2half2_rn(v[k], v[k + 1]), b = __floats2half2_rn(v[k + 2], v[k + 3]);
        uint2 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&a);
        packed.y = *reinterpret_cast<const uint32_t*>(&b);
        *reinterpret_cast<uint2*>(slot + k * 2) = packed;
      } else {
        *reinterpret_cast<float4*>(slot + k * 4) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
      }
    }
  }
  __syncthreads();
  constexpr int kUnitsPerChunk = kChunkBytes / kUnit;
  const int64_t n_chunks = min(static_cast<int64_t>(kDequantizeThreads), chunks_per_row * n_out - first);
  const int n_units = static_cast<int>(n_chunks) * kUnitsPerChunk;
  uint8_t* dst = reinterpret_cast<uint8_t*>(out + first * kChunk);
  for (int u = threadIdx.x; u < n_units; u += kDequantizeThreads) {
    const int chunk = u / kUnitsPerChunk, part = u % kUnitsPerChunk;
    *reinterpret_cast<Unit*>(dst + static_cast<int64_t>(u) * kUnit) =
        *reinterpret_cast<const Unit*>(stage + chunk * kSlotBytes + part * kUnit);
  }
}

template <class Out>
struct LaunchDequantize {
  const DeviceMatrix& w;
  const int32_t* row_ids;
  int64_t n_out;
  Out* out;
  cudaStream_t stream;
  template <GgmlType T>
  void operator()() const {
    const int64_t n = w.n_cols / Chunk<T>::kSize * n_out;
    dequantize_rows_kernel<T, Out>
        <<<static_cast<unsigned>((n + kDequantizeThreads - 1) / kDequantizeThreads), kDequantizeThreads, 0, stream>>>(
        w.data, w.row_bytes, w.n_cols, row_ids, n_out, out);
  }
};

template <class Out>
void dequantize_rows(const DeviceMatrix& w, const int32_t* row_ids, int64_t n_out, Out* out, cudaStream_t stream) {
  if (n_out == 0) return;
  const bool known = dispatch_type(w.type, LaunchDequantize<Out>{w, row_ids, n_out, out, stream});
  if (!known) {
    throw std::runtime_error("the CUDA backend has no kernel for weight type " + std::string(ggml_type_name(w.type)));
  }
  check_launch("dequantize_rows_kernel");
}

__global__ void convert_f32_to_f16_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2half_rn(x[i]);
}

}  // namespace

void dequantize_rows_f32(const DeviceMatrix& w, const int32_t* row_ids, int64_t n_out, float* out,
                         cudaStream_t stream) {
  dequantize_rows(w, row_ids, n_out, out, stream);
}

void dequantize_rows_f16(const DeviceMatrix& w, const int32_t* row_ids, int64_t n_out, __half* out,
                         cudaStream_t stream) {
  dequantize_rows(w, row_ids, n_out, out, stream);
}

void convert_f32_to_f16(const float* x, __half* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_f32_to_f16_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(x, y, n);
  check_launch("convert_f32_to_f16_kernel");
}

}  // namespace tessera::cuda
