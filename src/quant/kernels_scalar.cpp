// Portable kernels: the activation quantizers (matching llama.cpp's run-time rounding) and block dot products in
// plain C++. The SIMD kernels must agree with these up to float summation order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/reference.h"

namespace tessera::quant {
namespace {

// llama.cpp quantizes activations to Q8_0 / Q8_1 with its SIMD code, which differs from its reference
// quantizer: the inverse scale is 127 / amax (not 1 / d) and rounding is to nearest even (not away from zero).
// The golden logits were made that way, so we quantize activations the same way.
template <class Block>
void quantize_q8_blocks(const float* x, Block* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    y[i].d = fp32_to_fp16(d);
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      y[i].qs[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      sum += y[i].qs[j];
    }
    if constexpr (requires { y[i].s; }) y[i].s = fp32_to_fp16(d * static_cast<float>(sum));
  }
}

void quantize_act_q8_0(const float* x, void* xq, int64_t n) {
  quantize_q8_blocks(x, static_cast<BlockQ8_0*>(xq), n / kQK);
}
void quantize_act_q8_1(const float* x, void* xq, int64_t n) {
  quantize_q8_blocks(x, static_cast<BlockQ8_1*>(xq), n / kQK);
}
void quantize_act_q8_k(const float* x, void* xq, int64_t n) {
  ref::quantize_q8_k(x, static_cast<BlockQ8_K*>(xq), n / kQK_K);
}
void quantize_act_f32(const float* x, void* xq, int64_t n) { std::memcpy(xq, x, static_cast<size_t>(n) * sizeof(float)); }
void quantize_act_f16(const float* x, void* xq, int64_t n) {
  uint16_t* out = static_cast<uint16_t*>(xq);
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}
void quantize_act_bf16(const float* x, void* xq, int64_t n) {
  uint16_t* out = static_cast<uint16_t*>(xq);
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(x[i]);
}

// ---- block dot products: weight row (nb blocks) . activation row ----

float dot_f32(const void* w, const void* x, int64_t n) {
  const float* a = static_cast<const float*>(w);
  const float* b = static_cast<const float*>(x);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(sum);
}

template <float (*kToFloat)(uint16_t)>
float dot_half(const void* w, const void* x, int64_t n) {
  const uint16_t* a = static_cast<const uint16_t*>(w);
  const uint16_t* b = static_cast<const uint16_t*>(x);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(kToFloat(a[i])) * kToFloat(b[i]);
  return static_cast<float>(sum);
}

float dot_q4_0(const void* w, const void* x, int64_t n) {
  const BlockQ4_0* a = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* b = static_cast<const BlockQ8_0*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += ((a[i].qs[j] & 0xF) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
    }
    sum += fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d) * static_cast<float>(isum);
  }
  return sum;
}

float dot_q4_1(const void* w, const void* x, int64_t n) {
  const BlockQ4_1* a = static_cast<const BlockQ4_1*>(w);
  const BlockQ8_1* b = static_cast<const BlockQ8_1*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) isum += (a[i].qs[j] & 0xF) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
    sum += fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d) * static_cast<float>(isum) +
           fp16_to_fp32(a[i].m) * fp16_to_fp32(b[i].s);
  }
  return sum;
}

float dot_q5_0(const void* w, const void* x, int64_t n) {
  const BlockQ5_0* a = static_cast<const BlockQ5_0*>(w);
  const BlockQ8_0* b = static_cast<const BlockQ8_0*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    uint32_t qh;
    std::memcpy(&qh, a[i].qh, sizeof qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = ((a[i].qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4)) - 16;
      const int hi = ((a[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4)) - 16;
      isum += lo * b[i].qs[j] + hi * b[i].qs[j + 16];
    }
    sum += fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d) * static_cast<float>(isum);
  }
  return sum;
}

float dot_q5_1(const void* w, const void* x, int64_t n) {
  const BlockQ5_1* a = static_cast<const BlockQ5_1*>(w);
  const BlockQ8_1* b = static_cast<const BlockQ8_1*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    uint32_t qh;
    std::memcpy(&qh, a[i].qh, sizeof qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (a[i].qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (a[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      isum += lo * b[i].qs[j] + hi * b[i].qs[j + 16];
    }
    sum += fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d) * static_cast<float>(isum) +
           fp16_to_fp32(a[i].m) * fp16_to_fp32(b[i].s);
  }
  return sum;
}

float dot_q8_0(const void* w, const void* x, int64_t n) {
  const BlockQ8_0* a = static_cast<const BlockQ8_0*>(w);
  const BlockQ8_0* b = static_cast<const BlockQ8_0*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK; ++j) isum += a[i].qs[j] * b[i].qs[j];
    sum += fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d) * static_cast<float>(isum);
  }
  return sum;
}

// K-quants: unpack the block's integer levels into q[256], then integer sums per sub-block times its scale.
float dot_q2_k(const void* w, const void* x, int64_t n) {
  const BlockQ2_K* a = static_cast<const BlockQ2_K*>(w);
  const BlockQ8_K* b = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int scaled = 0, mins = 0;
    for (int s = 0; s < 16; ++s) {
      int isum = 0;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * s + l;
        const int q = (a[i].qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        isum += q * b[i].qs[e];
      }
      scaled += (a[i].scales[s] & 0xF) * isum;
      mins += (a[i].scales[s] >> 4) * b[i].bsums[s];
    }
    sum += b[i].d * (fp16_to_fp32(a[i].d) * static_cast<float>(scaled) - fp16_to_fp32(a[i].dmin) * static_cast<float>(mins));
  }
  return sum;
}

float dot_q3_k(const void* w, const void* x, int64_t n) {
  const BlockQ3_K* a = static_cast<const BlockQ3_K*>(w);
  const BlockQ8_K* b = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int scaled = 0;
    for (int s = 0; s < 16; ++s) {
      int isum = 0;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * s + l;
        const int low = (a[i].qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        const int q = low - (((a[i].hmask[e % 32] >> (e / 32)) & 1) ? 0 : 4);
        isum += q * b[i].qs[e];
      }
      scaled += q3k_scale(a[i].scales, s) * isum;
    }
    sum += b[i].d * fp16_to_fp32(a[i].d) * static_cast<float>(scaled);
  }
  return sum;
}

template <class Block, bool kFifthBit>
float dot_q45_k(const void* w, const void* x, int64_t n) {
  const Block* a = static_cast<const Block*>(w);
  const BlockQ8_K* b = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int scaled = 0, mins = 0;
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      scale_min_k4(s, a[i].scales, &sc, &m);
      int isum = 0;
      for (int l = 0; l < 32; ++l) {
        int q = (a[i].qs[(s / 2) * 32 + l] >> (4 * (s % 2))) & 0xF;
        if constexpr (kFifthBit) q |= ((a[i].qh[l] >> s) & 1) << 4;
        isum += q * b[i].qs[32 * s + l];
      }
      scaled += sc * isum;
      mins += m * (b[i].bsums[2 * s] + b[i].bsums[2 * s + 1]);
    }
    sum += b[i].d * (fp16_to_fp32(a[i].d) * static_cast<float>(scaled) - fp16_to_fp32(a[i].dmin) * static_cast<float>(mins));
  }
  return sum;
}

float dot_q6_k(const void* w, const void* x, int64_t n) {
  const BlockQ6_K* a = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* b = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int scaled = 0;
    for (int s = 0; s < 16; ++s) {
      int isum = 0;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * s + l;
        const int half = e / 128, k = (e % 128) / 32, p = e % 32;
        const int lo4 = (a[i].ql[half * 64 + p + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
        const int q = (lo4 | (((a[i].qh[half * 32 + p] >> (2 * k)) & 3) << 4)) - 32;
        isum += q * b[i].qs[e];
      }
      scaled += a[i].scales[s] * isum;
    }
    sum += b[i].d * fp16_to_fp32(a[i].d) * static_cast<float>(scaled);
  }
  return sum;
}

using DotFn = float (*)(const void* w, const void* x, int64_t n);

DotFn dot_function(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32: return dot_f32;
    case GgmlType::F16: return dot_half<fp16_to_fp32>;
    case GgmlType::BF16: return dot_half<bf16_to_fp32>;
    case GgmlType::Q4_0: return dot_q4_0;
    case GgmlType::Q4_1: return dot_q4_1;
    case GgmlType::Q5_0: return dot_q5_0;
    case GgmlType::Q5_1: return dot_q5_1;
    case GgmlType::Q8_0: return dot_q8_0;
    case GgmlType::Q2_K: return dot_q2_k;
    case GgmlType::Q3_K: return dot_q3_k;
    case GgmlType::Q4_K: return dot_q45_k<BlockQ4_K, false>;
    case GgmlType::Q5_K: return dot_q45_k<BlockQ5_K, true>;
    case GgmlType::Q6_K: return dot_q6_k;
    default: return nullptr;
  }
}

template <DotFn kDot>
void gemm_scalar(const void* weights, size_t weight_row_bytes, int64_t n_cols, int64_t row_begin, int64_t row_end,
                 const void* xq, size_t xq_row_bytes, int64_t n_tokens, float* y, int64_t ldy) {
  const uint8_t* w = static_cast<const uint8_t*>(weights);
  const uint8_t* x = static_cast<const uint8_t*>(xq);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      y[t * ldy + r] = kDot(w + r * weight_row_bytes, x + t * xq_row_bytes, n_cols);
    }
  }
}

}  // namespace

float dot_row_scalar(GgmlType weight_type, const void* w, const void* xq, int64_t n) {
  const DotFn dot = dot_function(weight_type);
  if (!dot) throw std::runtime_error("tensor type " + std::string(ggml_type_name(weight_type)) + " is not supported yet");
  return dot(w, xq, n);
}

namespace detail {

GemmKernel gemm_kernel_scalar(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32: return gemm_scalar<dot_f32>;
    case GgmlType::F16: return gemm_scalar<dot_half<fp16_to_fp32>>;
    case GgmlType::BF16: return gemm_scalar<dot_half<bf16_to_fp32>>;
    case GgmlType::Q4_0: return gemm_scalar<dot_q4_0>;
    case GgmlType::Q4_1: return gemm_scalar<dot_q4_1>;
    case GgmlType::Q5_0: return gemm_scalar<dot_q5_0>;
    case GgmlType::Q5_1: return gemm_scalar<dot_q5_1>;
    case GgmlType::Q8_0: return gemm_scalar<dot_q8_0>;
    case GgmlType::Q2_K: return gemm_scalar<dot_q2_k>;
    case GgmlType::Q3_K: return gemm_scalar<dot_q3_k>;
    case GgmlType::Q4_K: return gemm_scalar<dot_q45_k<BlockQ4_K, false>>;
    case GgmlType::Q5_K: return gemm_scalar<dot_q45_k<BlockQ5_K, true>>;
    case GgmlType::Q6_K: return gemm_scalar<dot_q6_k>;
    default: return nullptr;
  }
}

QuantizeKernel activation_quantizer_scalar(GgmlType activation_type) {
  switch (activation_type) {
    case GgmlType::F32: return quantize_act_f32;
    case GgmlType::F16: return quantize_act_f16;
    case GgmlType::BF16: return quantize_act_bf16;
    case GgmlType::Q8_0: return quantize_act_q8_0;
    case GgmlType::Q8_1: return quantize_act_q8_1;
    case GgmlType::Q8_K: return quantize_act_q8_k;
    default: return nullptr;
  }
}

}  // namespace detail
}  // namespace tessera::quant
