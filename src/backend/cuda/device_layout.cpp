#include "backend/cuda/device_layout.h"

#include <cstring>

namespace tessera::cuda {
namespace {

constexpr size_t kQ6KBlockBytes = 210, kQ6KQl = 128, kQ6KQh = 64, kQ6KScales = 16;

size_t round_up16(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

size_t device_row_bytes(GgmlType type, int64_t n_cols) {
  const size_t file_bytes = ggml_row_bytes(type, static_cast<uint64_t>(n_cols));
  return keeps_file_layout(type) ? file_bytes : round_up16(file_bytes);
}

void to_device_layout(GgmlType type, const uint8_t* rows, int64_t n_rows, int64_t n_cols, uint8_t* out) {
  const size_t file_bytes = ggml_row_bytes(type, static_cast<uint64_t>(n_cols));
  const size_t stride = device_row_bytes(type, n_cols);
  if (keeps_file_layout(type)) {
    std::memcpy(out, rows, file_bytes * static_cast<size_t>(n_rows));
    return;
  }
  const size_t n_blocks = file_bytes / kQ6KBlockBytes;
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* src = rows + static_cast<size_t>(r) * file_bytes;
    uint8_t* dst = out + static_cast<size_t>(r) * stride;
    uint8_t* ql = dst;
    uint8_t* qh = ql + kQ6KQl * n_blocks;
    uint8_t* scales = qh + kQ6KQh * n_blocks;
    uint8_t* d = scales + kQ6KScales * n_blocks;
    for (size_t b = 0; b < n_blocks; ++b, src += kQ6KBlockBytes) {
      std::memcpy(ql + kQ6KQl * b, src, kQ6KQl);
      std::memcpy(qh + kQ6KQh * b, src + kQ6KQl, kQ6KQh);
      std::memcpy(scales + kQ6KScales * b, src + kQ6KQl + kQ6KQh, kQ6KScales);
      std::memcpy(d + 2 * b, src + kQ6KQl + kQ6KQh + kQ6KScales, 2);
    }
    std::memset(dst + file_bytes, 0, stride - file_bytes);
  }
}

}  // namespace tessera::cuda
