#include <immintrin.h>

#include "backend/cpu/attention_simd.h"

namespace tessera::cpu::detail {
namespace {

// The vector operations of attention_simd.h on 8 floats. 4 query rows x 16 keys of scores and 4 rows x 16
// dimensions of outputs are 8 accumulators each, leaving room in the 16 registers for the loaded operands.
struct Avx2 {
  using V = __m256;
  using Sum = __m256d;
  static constexpr int kLanes = 8;
  static constexpr int kRows = 4;
  static constexpr int kKeyVectors = 2;
  static constexpr int kDimVectors = 2;

  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  static V zero() { return _mm256_setzero_ps(); }
  static V broadcast(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_first(const float* p, int n) { return _mm256_maskload_ps(p, first_lanes(n)); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static void store_first(float* p, V x, int n) { _mm256_maskstore_ps(p, first_lanes(n), x); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float reduce_max(V x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(V x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n built in the exponent field; n >= -126 keeps it a normal float.
  static V scale_by_pow2(V p, V n) {
    const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
  }
  static V zero_where_less(V y, V x, V limit) {
    return _mm256_blendv_ps(y, zero(), _mm256_cmp_ps(x, limit, _CMP_LT_OQ));
  }
  static V round_to_f16(V x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)); }
  static Sum sum_zero() { return _mm256_setzero_pd(); }
  // The halves are added first, so that acc sees one addition per call.
  static Sum sum_add(Sum acc, V x) {
    const Sum halves = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
    return _mm256_add_pd(acc, halves);
  }
  static double reduce_sum(Sum acc) {
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
  }
  // Pairs of rows interleaved by 1, then 2 lanes, then the 128-bit halves of the registers.
  static void transpose(V* r) {
    V a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
      a[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      a[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      for (int k = 0; k < 2; ++k) {
        const __m256d x = _mm256_castps_pd(a[i + k]), y = _mm256_castps_pd(a[i + k + 2]);
        b[i + 2 * k] = _mm256_castpd_ps(_mm256_unpacklo_pd(x, y));
        b[i + 2 * k + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(x, y));
      }
    }
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x20);
      r[k + 4] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x31);
    }
  }
};

}  // namespace

void attend_block_avx2(const AttentionBlock& block, float* scratch) { attend_block_simd<Avx2>(block, scratch); }
void attend_block_scored_avx2(const AttentionBlock& block, float* scores, int64_t score_stride) {
  attend_block_scored_simd<Avx2>(block, scores, score_stride);
}
void softmax_exp_avx2(const float* x, float* y, int64_t n) { exp_array<Avx2>(x, y, n); }
void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n) {
  swiglu_array<Avx2>(gate, up, out, n);
}

}  // namespace tessera::cpu::detail
