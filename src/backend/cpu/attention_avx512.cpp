// GCC 12 reports its own intrinsics' placeholder operands (_mm512_undefined_ps) as (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include "backend/cpu/attention_simd.h"

namespace tessera::cpu::detail {
namespace {

// The vector operations of attention_simd.h on 16 floats. 8 query rows x 32 keys of scores and 8 rows x 32
// dimensions of outputs are 16 accumulators each, half the register file.
struct Avx512 {
  using V = __m512;
  using Sum = __m512d;
  static constexpr int kLanes = 16;
  static constexpr int kRows = 8;
  static constexpr int kKeyVectors = 2;
  static constexpr int kDimVectors = 2;

  static __mmask16 first_lanes(int n) { return static_cast<__mmask16>((1u << n) - 1); }

  static V zero() { return _mm512_setzero_ps(); }
  static V broadcast(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(first_lanes(n), p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static void store_first(float* p, V x, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), x); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float reduce_max(V x) { return _mm512_reduce_max_ps(x); }
  static float reduce_add(V x) { return _mm512_reduce_add_ps(x); }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V scale_by_pow2(V p, V n) { return _mm512_scalef_ps(p, n); }
  static V zero_where_less(V y, V x, V limit) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, limit, _CMP_LT_OQ), zero());
  }
  static V round_to_f16(V x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static Sum sum_zero() { return _mm512_setzero_pd(); }
  // The halves are added first, so that acc sees one addition per call.
  static Sum sum_add(Sum acc, V x) {
    const Sum halves = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(x)),
                                     _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)));
    return _mm512_add_pd(acc, halves);
  }
  static double reduce_sum(Sum acc) { return _mm512_reduce_add_pd(acc); }
  // Pairs of rows interleaved by 1, then 2 lanes, then 4 and 8 (128-bit quarters of the registers).
  static void transpose(V* r) {
    V a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
      a[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      a[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      for (int k = 0; k < 2; ++k) {
        const __m512d x = _mm512_castps_pd(a[i + k]), y = _mm512_castps_pd(a[i + k + 2]);
        b[i + 2 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
        b[i + 2 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
      }
    }
    for (int i = 0; i < 16; i += 8) {
      for (int k = 0; k < 4; ++k) {
        a[i + k] = _mm512_shuffle_f32x4(b[i + k], b[i + k + 4], 0x88);
        a[i + k + 4] = _mm512_shuffle_f32x4(b[i + k], b[i + k + 4], 0xdd);
      }
    }
    for (int k = 0; k < 8; ++k) {
      r[k] = _mm512_shuffle_f32x4(a[k], a[k + 8], 0x88);
      r[k + 8] = _mm512_shuffle_f32x4(a[k], a[k + 8], 0xdd);
    }
  }
};

}  // namespace

void attend_block_avx512(const AttentionBlock& block, float* scratch) { attend_block_simd<Avx512>(block, scratch); }
void attend_block_scored_avx512(const AttentionBlock& block, float* scores, int64_t score_stride) {
  attend_block_scored_simd<Avx512>(block, scores, score_stride);
}
void softmax_exp_avx512(const float* x, float* y, int64_t n) { exp_array<Avx512>(x, y, n); }
void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n) {
  swiglu_array<Avx512>(gate, up, out, n);
}

}  // namespace tessera::cpu::detail
