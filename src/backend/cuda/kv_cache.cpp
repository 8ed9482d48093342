// The KV cache's device layout (kernels.h): sizes, planes and whole-row copies.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

constexpr size_t kPlaneAlign = 256;

size_t align_up(size_t n) { return (n + kPlaneAlign - 1) / kPlaneAlign * kPlaneAlign; }
bool quantized(KvFormat f) { return f == KvFormat::Q8_0 || f == KvFormat::Q4_0; }
size_t data_plane_bytes(KvFormat format, int64_t n_slots, int kv_dim) {
  return align_up(static_cast<size_t>(n_slots) * static_cast<size_t>(kv_data_bytes(format, kv_dim)));
}
size_t scale_row_bytes(KvFormat format, int kv_dim) {
  return quantized(format) ? static_cast<size_t>(kv_dim / kKvQuantBlock) * sizeof(__half) : 0;
}

}  // namespace

size_t kv_cache_device_bytes(KvFormat format, int64_t n_slots, int kv_dim) {
  return data_plane_bytes(format, n_slots, kv_dim) + align_up(static_cast<size_t>(n_slots) * scale_row_bytes(format, kv_dim));
}

KvCache kv_cache_at(void* base, KvFormat format, int64_t n_slots, int kv_dim) {
  KvCache c;
  c.data = static_cast<uint8_t*>(base);
  if (quantized(format)) c.scales = reinterpret_cast<__half*>(c.data + data_plane_bytes(format, n_slots, kv_dim));
  return c;
}

void copy_kv_rows(const KvCache& cache, KvFormat format, int kv_dim, int64_t from, int64_t to, int64_t n,
                  cudaStream_t stream) {
  const size_t row = static_cast<size_t>(kv_data_bytes(format, kv_dim));
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(cache.data + to * row, cache.data + from * row, n * row, cudaMemcpyDeviceToDevice,
                                     stream));
  if (const size_t scales = scale_row_bytes(format, kv_dim); scales > 0) {
    auto* base = reinterpret_cast<uint8_t*>(cache.scales);
    TESSERA_CUDA_CHECK(cudaMemcpyAsync(base + to * scales, base + from * scales, n * scales, cudaMemcpyDeviceToDevice,
                                       stream));
  }
}

}  // namespace tessera::cuda
