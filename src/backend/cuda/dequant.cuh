// Device-side decoding of GGUF block formats. Each type is read in "chunks": kSize consecutive values of a row
// that one thread decodes into registers, Chunk<T>::load(row, n_cols, c, values) for chunk c of a row of n_cols
// values (the width matters only to Q6_K, whose device rows group each field of the row's super-blocks,
// device_layout.h; the others read one contiguous run of bytes). The value formulas follow the scalar reference
// in src/quant (quant::dequantize_row_ref), operation for operation, so results match it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "gguf/ggml_type.h"

namespace tessera::cuda {

__device__ __forceinline__ float f16_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// Four bytes from a 2-byte aligned address.
__device__ __forceinline__ uint32_t load_u32_a2(const uint8_t* p) {
  return static_cast<uint32_t>(load_u16(p)) | (static_cast<uint32_t>(load_u16(p + 2)) << 16);
}

// 16 bytes from a 2-byte aligned address, as four little-endian words.
__device__ __forceinline__ void load16_a2(const uint8_t* p, uint32_t w[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = load_u32_a2(p + 4 * i);
}

__device__ __forceinline__ uint8_t byte_of(const uint32_t* w, int i) { return (w[i / 4] >> (8 * (i % 4))) & 0xFF; }

// q - offset as a float, exactly, for 0 <= q < 2^23: q goes into the mantissa of 2^23 and one subtraction
// removes both. This replaces the integer-to-float conversion, which runs at 1/8 of the FP32 rate and bounded
// the decode kernels.
template <int kOffset = 0>
__device__ __forceinline__ float int_to_float(uint32_t q) {
  return __int_as_float(0x4B000000u | q) - (8388608.0f + static_cast<float>(kOffset));
}

template <GgmlType T>
struct Chunk;

template <>
struct Chunk<GgmlType::F32> {
  static constexpr int kSize = 4;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const float4 f = reinterpret_cast<const float4*>(row)[c];
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  }
};

template <>
struct Chunk<GgmlType::F16> {
  static constexpr int kSize = 8;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint4 u = reinterpret_cast<const uint4*>(row)[c];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = f16_bits_to_float(w[i] & 0xFFFF);
      v[2 * i + 1] = f16_bits_to_float(w[i] >> 16);
    }
  }
};

template <>
struct Chunk<GgmlType::BF16> {
  static constexpr int kSize = 8;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint4 u = reinterpret_cast<const uint4*>(row)[c];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
  }
};

// Q4_0 (18 bytes / 32 values): d * (q - 8).
template <>
struct Chunk<GgmlType::Q4_0> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + c * 18;
    const float d = f16_bits_to_float(load_u16(b));
    uint32_t q[4];
    load16_a2(b + 2, q);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      v[j] = int_to_float<8>(byte_of(q, j) & 0xF) * d;
      v[j + 16] = int_to_float<8>(byte_of(q, j) >> 4) * d;
    }
  }
};

// Q4_1 (20 bytes): d * q + m.
template <>
struct Chunk<GgmlType::Q4_1> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + c * 20;
    const float d = f16_bits_to_float(load_u16(b));
    const float m = f16_bits_to_float(load_u16(b + 2));
    uint32_t q[4];
    load16_a2(b + 4, q);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      v[j] = int_to_float(byte_of(q, j) & 0xF) * d + m;
      v[j + 16] = int_to_float(byte_of(q, j) >> 4) * d + m;
    }
  }
};

// Q5_0 (22 bytes): d * (q - 16), the fifth bit of value j is bit j of qh.
template <>
struct Chunk<GgmlType::Q5_0> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + c * 22;
    const float d = f16_bits_to_float(load_u16(b));
    const uint32_t qh = load_u32_a2(b + 2);
    uint32_t q[4];
    load16_a2(b + 6, q);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int lo = (byte_of(q, j) & 0xF) | (((qh >> j) << 4) & 0x10);
      const int hi = (byte_of(q, j) >> 4) | ((qh >> (j + 12)) & 0x10);
      v[j] = int_to_float<16>(lo) * d;
      v[j + 16] = int_to_float<16>(hi) * d;
    }
  }
};

// Q5_1 (24 bytes): d * q + m.
template <>
struct Chunk<GgmlType::Q5_1> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + c * 24;
    const float d = f16_bits_to_float(load_u16(b));
    const float m = f16_bits_to_float(load_u16(b + 2));
    const uint32_t qh = load_u32_a2(b + 4);
    uint32_t q[4];
    load16_a2(b + 8, q);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int lo = (byte_of(q, j) & 0xF) | (((qh >> j) << 4) & 0x10);
      const int hi = (byte_of(q, j) >> 4) | ((qh >> (j + 12)) & 0x10);
      v[j] = int_to_float(lo) * d + m;
      v[j + 16] = int_to_float(hi) * d + m;
    }
  }
};

// Q8_0 (34 bytes): d * q.
template <>
struct Chunk<GgmlType::Q8_0> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + c * 34;
    const float d = f16_bits_to_float(load_u16(b));
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t w = load_u32_a2(b + 2 + 4 * i);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[4 * i + k] = int_to_float<128>(((w >> (8 * k)) & 0xFF) ^ 0x80) * d;
    }
  }
};

// Q2_K (84 bytes / 256 values). Chunk c covers values 32c..32c+31 of one super-block: half h = c/2 of it,
// 2-bit plane s; value l uses qs[32h + l] >> 2s and the 4-bit scale/min pair scales[8h + 2s + l/16].
template <>
struct Chunk<GgmlType::Q2_K> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + (c / 8) * 84;
    const int sub = static_cast<int>(c % 8), h = sub / 4, s = sub % 4;
    const float d = f16_bits_to_float(load_u16(b + 80));
    const float dmin = f16_bits_to_float(load_u16(b + 82));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint8_t sc = b[8 * h + 2 * s + half];
      const float dl = d * static_cast<float>(sc & 0xF), ml = dmin * static_cast<float>(sc >> 4);
      uint32_t q[4];
      load16_a2(b + 16 + 32 * h + 16 * half, q);
#pragma unroll
      for (int l = 0; l < 16; ++l) v[16 * half + l] = dl * int_to_float((byte_of(q, l) >> (2 * s)) & 3) - ml;
    }
  }
};

// Q3_K (110 bytes): like Q2_K plus a third bit from hmask (bit 4h + s of hmask[l]); 6-bit signed scales.
template <>
struct Chunk<GgmlType::Q3_K> {
  static constexpr int kSize = 32;
  __device__ static int scale(const uint8_t* scales, int i) {
    const int low = i < 8 ? (scales[i] & 0xF) : (scales[i - 8] >> 4);
    const int high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (low | (high << 4)) - 32;
  }
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + (c / 8) * 110;
    const int sub = static_cast<int>(c % 8), h = sub / 4, s = sub % 4;
    const float d = f16_bits_to_float(load_u16(b + 108));
    const int hbit = 4 * h + s;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float dl = d * static_cast<float>(scale(b + 96, 8 * h + 2 * s + half));
      uint32_t q[4], hm[4];
      load16_a2(b + 32 + 32 * h + 16 * half, q);
      load16_a2(b + 16 * half, hm);
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        // (q & 3) - (high bit ? 0 : 4) = ((q & 3) | high bit << 2) - 4
        const uint32_t qv = ((byte_of(q, l) >> (2 * s)) & 3) | (((byte_of(hm, l) >> hbit) & 1) << 2);
        v[16 * half + l] = dl * int_to_float<4>(qv);
      }
    }
  }
};

// The 6-bit scale and min j of a Q4_K / Q5_K super-block's 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (144 bytes / 256 values). Chunk c covers 64 values: sub-blocks 2g and 2g+1 (g = c % 4) share the 32
// bytes qs[32g..], low nibbles first. With 16-byte aligned rows these are two aligned 16-byte loads.
template <>
struct Chunk<GgmlType::Q4_K> {
  static constexpr int kSize = 64;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + (c / 4) * 144;
    const int g = static_cast<int>(c % 4);
    const uint32_t dd = *reinterpret_cast<const uint32_t*>(b);
    const float d = f16_bits_to_float(dd & 0xFFFF), dmin = f16_bits_to_float(dd >> 16);
    uint8_t scales[12];
    const uint32_t* s32 = reinterpret_cast<const uint32_t*>(b + 4);
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      const uint32_t w = s32[i];
#pragma unroll
      for (int k = 0; k < 4; ++k) scales[4 * i + k] = (w >> (8 * k)) & 0xFF;
    }
    int sc1, m1, sc2, m2;
    scale_min_k4(2 * g, scales, sc1, m1);
    scale_min_k4(2 * g + 1, scales, sc2, m2);
    const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
    const float d2 = d * static_cast<float>(sc2), min2 = dmin * static_cast<float>(m2);
    const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 32 * g);
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      const uint4 u = qs[part];
      const uint32_t q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        v[16 * part + l] = d1 * int_to_float(byte_of(q, l) & 0xF) - min1;
        v[32 + 16 * part + l] = d2 * int_to_float(byte_of(q, l) >> 4) - min2;
      }
    }
  }
};

// Q5_K (176 bytes): Q4_K plus a fifth bit from qh[l] (bit 2g for the low half, 2g+1 for the high half).
template <>
struct Chunk<GgmlType::Q5_K> {
  static constexpr int kSize = 64;
  __device__ static void load(const uint8_t* row, int64_t, int64_t c, float* v) {
    const uint8_t* b = row + (c / 4) * 176;
    const int g = static_cast<int>(c % 4);
    const uint32_t dd = *reinterpret_cast<const uint32_t*>(b);
    const float d = f16_bits_to_float(dd & 0xFFFF), dmin = f16_bits_to_float(dd >> 16);
    uint8_t scales[12];
    const uint32_t* s32 = reinterpret_cast<const uint32_t*>(b + 4);
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      const uint32_t w = s32[i];
#pragma unroll
      for (int k = 0; k < 4; ++k) scales[4 * i + k] = (w >> (8 * k)) & 0xFF;
    }
    int sc1, m1, sc2, m2;
    scale_min_k4(2 * g, scales, sc1, m1);
    scale_min_k4(2 * g + 1, scales, sc2, m2);
    const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
    const float d2 = d * static_cast<float>(sc2), min2 = dmin * static_cast<float>(m2);
    const uint4* qh4 = reinterpret_cast<const uint4*>(b + 16);
    const uint4* qs = reinterpret_cast<const uint4*>(b + 48 + 32 * g);
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      const uint4 u = qs[part], uh = qh4[part];
      const uint32_t q[4] = {u.x, u.y, u.z, u.w};
      const uint32_t h[4] = {uh.x, uh.y, uh.z, uh.w};
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        const int hb = byte_of(h, l);
        v[16 * part + l] = d1 * int_to_float((byte_of(q, l) & 0xF) | (((hb >> (2 * g)) & 1) << 4)) - min1;
        v[32 + 16 * part + l] = d2 * int_to_float((byte_of(q, l) >> 4) | (((hb >> (2 * g + 1)) & 1) << 4)) - min2;
      }
    }
  }
};

// Q6_K in its device layout (device_layout.h: a row's ql of every super-block, then its qh, scales and d). Chunk c
// covers values 32c'.. of super-block c / 8 (c' = c % 8): half h = c'/4 and quarter k = c'%4 of it; the low 4 bits
// come from ql[64h + 32(k&1) + l] (low nibble for k < 2, high for k >= 2), the top 2 bits from qh[32h + l] >> 2k,
// the scale from scales[8h + 2k + l/16].
template <>
struct Chunk<GgmlType::Q6_K> {
  static constexpr int kSize = 32;
  __device__ static void load(const uint8_t* row, int64_t n_cols, int64_t c, float* v) {
    const int64_t n_blocks = n_cols / 256, block = c / 8;
    const int sub = static_cast<int>(c % 8), h = sub / 4, k = sub % 4;
    const uint8_t* ql = row + 128 * block + 64 * h + 32 * (k & 1);
    const uint8_t* qh = row + 128 * n_blocks + 64 * block + 32 * h;
    const int8_t* scales = reinterpret_cast<const int8_t*>(row + 192 * n_blocks + 16 * block + 8 * h + 2 * k);
    const float d = f16_bits_to_float(load_u16(row + 208 * n_blocks + 2 * block));
    const int nib_shift = k >= 2 ? 4 : 0;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float dl = d * static_cast<float>(scales[half]);
      const uint4 ul = reinterpret_cast<const uint4*>(ql)[half], uh = reinterpret_cast<const uint4*>(qh)[half];
      const uint32_t l4[4] = {ul.x, ul.y, ul.z, ul.w}, h4[4] = {uh.x, uh.y, uh.z, uh.w};
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        const int q = ((byte_of(l4, l) >> nib_shift) & 0xF) | (((byte_of(h4, l) >> (2 * k)) & 3) << 4);
        v[16 * half + l] = dl * int_to_float<32>(q);
      }
    }
  }
};

// Calls f.template operator()<T>() for the runtime type; false when the type has no kernels.
template <class F>
bool dispatch_type(GgmlType type, F&& f) {
  switch (type) {
    case GgmlType::F32: f.template operator()<GgmlType::F32>(); return true;
    case GgmlType::F16: f.template operator()<GgmlType::F16>(); return true;
    case GgmlType::BF16: f.template operator()<GgmlType::BF16>(); return true;
    case GgmlType::Q4_0: f.template operator()<GgmlType::Q4_0>(); return true;
    case GgmlType::Q4_1: f.template operator()<GgmlType::Q4_1>(); return true;
    case GgmlType::Q5_0: f.template operator()<GgmlType::Q5_0>(); return true;
    case GgmlType::Q5_1: f.template operator()<GgmlType::Q5_1>(); return true;
    case GgmlType::Q8_0: f.template operator()<GgmlType::Q8_0>(); return true;
    case GgmlType::Q2_K: f.template operator()<GgmlType::Q2_K>(); return true;
    case GgmlType::Q3_K: f.template operator()<GgmlType::Q3_K>(); return true;
    case GgmlType::Q4_K: f.template operator()<GgmlType::Q4_K>(); return true;
    case GgmlType::Q5_K: f.template operator()<GgmlType::Q5_K>(); return true;
    case GgmlType::Q6_K: f.template operator()<GgmlType::Q6_K>(); return true;
    default: return false;
  }
}

}  // namespace tessera::cuda
