// How weight rows are laid out in device memory. Most types keep the file's rows byte for byte. Q6_K rows are
// permuted: a row's 210-byte super-blocks are only 2-byte aligned in the file, which leaves a decode thread 2-byte
// loads, so on the device a row holds the ql (128 bytes) of every super-block, then their qh (64), their int8
// scales (16) and their f16 d (2), each section 16-byte aligned, at a stride rounded up to 16 bytes. The same bytes,
// no dequantized copy: a unit of 64 values is three 16-byte loads of quants, one 8-byte load of scales and its d.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gguf/ggml_type.h"

namespace tessera::cuda {

// Whether the device rows are the file's rows as they are.
constexpr bool keeps_file_layout(GgmlType type) { return type != GgmlType::Q6_K; }

// Bytes from one device row to the next.
size_t device_row_bytes(GgmlType type, int64_t n_cols);

// Writes n_rows rows in the file's format (ggml_row_bytes apart) to `out` in the device layout
// (device_row_bytes apart; padding zeroed). Host memory on both sides.
void to_device_layout(GgmlType type, const uint8_t* rows, int64_t n_rows, int64_t n_cols, uint8_t* out);

}  // namespace tessera::cuda
