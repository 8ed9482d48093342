// Every CUDA op against the CPU reference (src/quant's dequantize_row_ref, src/backend/cpu/ops.h) on random
// inputs with odd sizes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/kernels.h"
#include "cuda/cuda_test_util.h"
#include "quant/quant.h"

namespace tessera::cuda {
namespace {

using test::DeviceBuffer;
using test::expect_close;

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Offsets of the f16 scale fields inside one block of each quantized type (random bytes elsewhere are valid).
std::vector<size_t> scale_offsets(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0: return {0};
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q2_K: return {80, 82};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q6_K: return {208};
    default: return {};
  }
}

// A random matrix in `type`: plain types from random values, block types from random bytes with sane scales.
std::vector<uint8_t> random_matrix(GgmlType type, int64_t n_rows, int64_t n_cols, uint32_t seed) {
  const size_t row_bytes = ggml_row_bytes(type, n_cols);
  std::vector<uint8_t> bytes(row_bytes * n_rows);
  std::mt19937 rng(seed);
  const std::vector<float> values = random_floats(n_rows * n_cols, -1, 1, seed + 1);
  if (type == GgmlType::F32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else if (type == GgmlType::F16 || type == GgmlType::BF16) {
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = type == GgmlType::F16 ? quant::fp32_to_fp16(values[i]) : quant::fp32_to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  } else {
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    const GgmlTypeTraits& traits = ggml_type_traits(type);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (size_t block = 0; block < bytes.size() / traits.block_bytes; ++block) {
      for (size_t offset : scale_offsets(type)) {
        const uint16_t h = quant::fp32_to_fp16(scale(rng));
        std::memcpy(bytes.data() + block * traits.block_bytes + offset, &h, 2);
      }
    }
  }
  return bytes;
}

std::vector<float> dequantize_ref(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n_rows, int64_t n_cols) {
  std::vector<float> out(n_rows * n_cols);
  const size_t row_bytes = ggml_row_bytes(type, n_cols);
  for (int64_t r = 0; r < n_rows; ++r) {
    quant::dequantize_row_ref(type, bytes.data() + r * row_bytes, out.data() + r * n_cols, n_cols);
  }
  return out;
}

const GgmlType kAllTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                              GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                              GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

class CudaTypes : public ::testing::TestWithParam<GgmlType> {};

void matvec_case(GgmlType type, int64_t n_cols);

TEST_P(CudaTypes, DequantizeMatchesReference) {
  TESSERA_REQUIRE_GPU();
  const GgmlType type = GetParam();
  const int64_t n_rows = 7, n_cols = 768;
  const std::vector<uint8_t> bytes = random_matrix(type, n_rows, n_cols, 11);
  const std::vector<float> want = dequantize_ref(type, bytes, n_rows, n_cols);
  DeviceBuffer<uint8_t> w(bytes);
  const DeviceMatrix m{type, w.get(), ggml_row_bytes(type, n_cols), n_cols, n_rows};
  // Rows picked out of order, as the embedding lookup does.
  const std::vector<int32_t> ids = {5, 0, 6, 5, 2};
  DeviceBuffer<int32_t> d_ids(ids);
  DeviceBuffer<float> out(ids.size() * n_cols);
  dequantize_rows_f32(m, d_ids.get(), static_cast<int64_t>(ids.size()), out.get(), nullptr);
  std::vector<float> want_rows;
  for (int32_t id : ids)
    want_rows.insert(want_rows.end(), want.begin() + id * n_cols, want.begin() + (id + 1) * n_cols);
  expect_close(out.download(), want_rows, 1e-6, 1e-6, std::string(ggml_type_name(type)) + " rows");
}

// y = W x for 1, 3 and 8 tokens, with a second and third matrix in the same launch and the accumulate mode;
// 3328 columns with 8 tokens take two shared-memory tiles of x.
TEST_P(CudaTypes, MatvecMatchesReference) {
  TESSERA_REQUIRE_GPU();
  for (const int64_t n_cols : {768, 3328}) {
    matvec_case(GetParam(), n_cols);
  }
}

void matvec_case(GgmlType type, int64_t n_cols) {
  const int64_t rows[3] = {37, 5, 64};
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::unique_ptr<DeviceBuffer<uint8_t>>> weights;
  for (int j = 0; j < 3; ++j) {
    bytes.push_back(random_matrix(type, rows[j], n_cols, 100 + j));
    weights.push_back(std::make_unique<DeviceBuffer<uint8_t>>(bytes.back()));
  }
  for (int n_tokens : {1, 3, 8}) {
    const std::vector<float> x = random_floats(n_tokens * n_cols, -1, 1, 7 + n_tokens);
    DeviceBuffer<float> d_x(x);
    std::vector<std::unique_ptr<DeviceBuffer<float>>> ys;
    std::vector<std::vector<float>> initial;
    MatvecJob jobs[3];
    for (int j = 0; j < 3; ++j) {
      initial.push_back(random_floats(n_tokens * rows[j], -1, 1, 50 + j));
      ys.push_back(std::make_unique<DeviceBuffer<float>>(initial.back()));
      jobs[j] = MatvecJob{DeviceMatrix{type, weights[j]->get(), ggml_row_bytes(type, n_cols), n_cols, rows[j]},
                          ys[j]->get(), rows[j], j == 1};
    }
    matvec(jobs, 3, d_x.get(), n_cols, n_tokens, nullptr);
    for (int j = 0; j < 3; ++j) {
      const std::vector<float> w = dequantize_ref(type, bytes[j], rows[j], n_cols);
      std::vector<float> want(n_tokens * rows[j]);
      double max_abs = 0;
      for (int t = 0; t < n_tokens; ++t) {
        for (int64_t r = 0; r < rows[j]; ++r) {
          double sum = 0;
          for (int64_t i = 0; i < n_cols; ++i) sum += static_cast<double>(w[r * n_cols + i]) * x[t * n_cols + i];
          if (jobs[j].accumulate) sum += initial[j][t * rows[j] + r];
          want[t * rows[j] + r] = static_cast<float>(sum);
          max_abs = std::max(max_abs, std::fabs(sum));
        }
      }
      expect_close(ys[j]->download(), want, 2e-5 * (max_abs + 1), 1e-5,
                   std::string(ggml_type_name(type)) + " matrix " + std::to_string(j) + ", tokens " +
                       std::to_string(n_tokens) + ", columns " + std::to_string(n_cols));
    }
  }
}

// The tensor-core path: W decoded to f16, x rounded to f16, f32 accumulation (F32 weights stay f32).
TEST_P(CudaTypes, GemmMatchesReference) {
  TESSERA_REQUIRE_GPU();
  const GgmlType type = GetParam();
  const int64_t n_rows = 45, n_cols = 768, n_tokens = 29;
  const std::vector<uint8_t> bytes = random_matrix(type, n_rows, n_cols, 3);
  const std::vector<float> w = dequantize_ref(type, bytes, n_rows, n_cols);
  const std::vector<float> x = random_floats(n_tokens * n_cols, -1, 1, 4);
  const std::vector<float> y0 = random_floats(n_tokens * n_rows, -1, 1, 5);
  DeviceBuffer<uint8_t> d_w(bytes);
  DeviceBuffer<float> d_x(x), d_y(y0);
  DeviceBuffer<__half> x16(n_tokens * n_cols), w16(n_rows * n_cols);
  convert_f32_to_f16(d_x.get(), x16.get(), n_tokens * n_cols, nullptr);
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const DeviceMatrix m{type, d_w.get(), ggml_row_bytes(type, n_cols), n_cols, n_rows};
  gemm(handle, m, d_x.get(), x16.get(), n_tokens, d_y.get(), n_rows, true, w16.get(), nullptr);
  std::vector<float> want(n_tokens * n_rows);
  double max_abs = 0;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_rows; ++r) {
      double sum = y0[t * n_rows + r];
      for (int64_t i = 0; i < n_cols; ++i) sum += static_cast<double>(w[r * n_cols + i]) * x[t * n_cols + i];
      want[t * n_rows + r] = static_cast<float>(sum);
      max_abs = std::max(max_abs, std::fabs(sum));
    }
  }
  const double tol = type == GgmlType::F32 ? 2e-5 : 2e-3;
  expect_close(d_y.download(), want, tol * (max_abs + 1), 0, std::string(ggml_type_name(type)) + " gemm");
  cublasDestroy(handle);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CudaTypes, ::testing::ValuesIn(kAllTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(ggml_type_name(info.param));
                         });

TEST(CudaOps, RmsNormMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const int n = 333, n_rows = 5;
  const std::vector<float> x = random_floats(n * n_rows, -2, 2, 1), w = random_floats(n, 0.5f, 1.5f, 2);
  const std::vector<int32_t> rows = {4, 1, 3};
  DeviceBuffer<float> d_x(x), d_w(w), d_y(rows.size() * n);
  DeviceBuffer<int32_t> d_rows(rows);
  rms_norm(d_x.get(), d_rows.get(), d_w.get(), d_y.get(), nullptr, static_cast<int64_t>(rows.size()), n, 1e-5f,
           nullptr);
  std::vector<float> want(rows.size() * n);
  for (size_t r = 0; r < rows.size(); ++r)
    cpu::rms_norm(x.data() + rows[r] * n, w.data(), want.data() + r * n, n, 1e-5f);
  expect_close(d_y.download(), want, 1e-6, 1e-5, "rms_norm");
}

TEST(CudaOps, SwigluMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const int n = 1001;
  const std::vector<float> g = random_floats(n, -6, 6, 1), u = random_floats(n, -2, 2, 2);
  DeviceBuffer<float> d_g(g), d_u(u), d_out(n);
  DeviceBuffer<__half> d_out16(n);
  swiglu(d_g.get(), d_u.get(), d_out.get(), d_out16.get(), n, nullptr);
  std::vector<float> want(n);
  cpu::swiglu(g.data(), u.data(), want.data(), n);
  expect_close(d_out.download(), want, 1e-6, 1e-5, "swiglu");
}

TEST(CudaOps, RopeAndKvStoreMatchCpu) {
  TESSERA_REQUIRE_GPU();
  const int n_head = 6, n_head_kv = 2, head_dim = 40, n_tokens = 3, n_slots = 11;
  for (bool f16 : {true, false}) {
    model::RopeConfig rc;
    rc.n_dims = 32;  // fewer than head_dim: the tail of each head is not rotated
    rc.freq_base = 500000;
    rc.freq_scale = 0.25f;
    rc.freq_factors = random_floats(rc.n_dims / 2, 1, 8, 9);
    const std::vector<int32_t> positions = {0, 17, 4093}, slots = {9, 2, 5};
    const int q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim;
    std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 1), k = random_floats(n_tokens * kv_dim, -1, 1, 2),
                       v = random_floats(n_tokens * kv_dim, -1, 1, 3);
    DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_ff(rc.freq_factors);
    DeviceBuffer<int32_t> d_pos(positions), d_slots(slots);
    const size_t elem = f16 ? 2 : 4;
    DeviceBuffer<uint8_t> k_cache(n_slots * kv_dim * elem), v_cache(n_slots * kv_dim * elem);
    RopeParams p{n_head,        n_head_kv, head_dim, rc.n_dims, std::pow(rc.freq_base, -2.0f / rc.n_dims),
                 rc.freq_scale, d_ff.get()};
    rope_and_store_kv(p, d_q.get(), d_k.get(), d_v.get(), d_pos.get(), d_slots.get(), n_tokens, k_cache.get(),
                      v_cache.get(), f16, nullptr);
    for (int t = 0; t < n_tokens; ++t) {
      const cpu::RopeAngles a = cpu::rope_angles(rc, positions[t]);
      cpu::apply_rope(q.data() + t * q_dim, n_head, head_dim, a);
      cpu::apply_rope(k.data() + t * kv_dim, n_head_kv, head_dim, a);
    }
    expect_close(d_q.download(), q, 2e-6, 1e-5, "rope q");
    const std::vector<uint8_t> kc = k_cache.download(), vc = v_cache.download();
    std::vector<float> got_k, want_k, got_v, want_v;
    for (int t = 0; t < n_tokens; ++t) {
      for (int i = 0; i < kv_dim; ++i) {
        const size_t at = static_cast<size_t>(slots[t]) * kv_dim + i;
        float kv_k, kv_v;
        if (f16) {
          uint16_t hk, hv;
          std::memcpy(&hk, kc.data() + 2 * at, 2);
          std::memcpy(&hv, vc.data() + 2 * at, 2);
          kv_k = quant::fp16_to_fp32(hk), kv_v = quant::fp16_to_fp32(hv);
        } else {
          std::memcpy(&kv_k, kc.data() + 4 * at, 4);
          std::memcpy(&kv_v, vc.data() + 4 * at, 4);
        }
        got_k.push_back(kv_k), got_v.push_back(kv_v);
        const float wk = k[t * kv_dim + i], wv = v[t * kv_dim + i];
        want_k.push_back(f16 ? cpu::round_to_f16(wk) : wk);
        want_v.push_back(f16 ? cpu::round_to_f16(wv) : wv);
      }
    }
    expect_close(got_k, want_k, 2e-6, f16 ? 1e-3 : 1e-5, "k cache");
    expect_close(got_v, want_v, 0, 0, "v cache");
  }
}

// Paged attention with GQA against cpu::attend, for one block per head group and for split keys.
TEST(CudaOps, AttentionMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  for (const Shape shape : {Shape{6, 2, 80}, Shape{16, 2, 64}, Shape{8, 4, 8}, Shape{4, 4, 128}}) {
    for (bool f16 : {true, false}) {
      for (int n_splits : {1, 7}) {
        const int n_slots = 300, kv_dim = shape.n_head_kv * shape.head_dim, q_dim = shape.n_head * shape.head_dim;
        // Two sequences: tokens 0-1 of sequence 0 (positions 250, 251), token 2 of sequence 1 (position 0),
        // token 3 of sequence 1 at position 40; slots are a permutation (paged).
        std::vector<int32_t> perm(n_slots);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), std::mt19937(3));
        const std::vector<int32_t> seq0(perm.begin(), perm.begin() + 252), seq1(perm.begin() + 252, perm.begin() + 293);
        const std::vector<int32_t> positions = {250, 251, 0, 40};
        std::vector<int32_t> table = seq0;
        table.insert(table.end(), seq1.begin(), seq1.end());
        const std::vector<int32_t> offsets = {0, 0, 252, 252};
        const int n_tokens = 4;

        const std::vector<float> k = random_floats(n_slots * kv_dim, -1, 1, 10),
                                 v = random_floats(n_slots * kv_dim, -1, 1, 11);
        const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 12);
        std::vector<uint8_t> kc(n_slots * kv_dim * (f16 ? 2 : 4)), vc(kc.size());
        std::vector<float> k_stored(k.size()), v_stored(v.size());
        for (size_t i = 0; i < k.size(); ++i) {
          k_stored[i] = f16 ? cpu::round_to_f16(k[i]) : k[i];
          v_stored[i] = f16 ? cpu::round_to_f16(v[i]) : v[i];
          if (f16) {
            const uint16_t hk = quant::fp32_to_fp16(k[i]), hv = quant::fp32_to_fp16(v[i]);
            std::memcpy(kc.data() + 2 * i, &hk, 2);
            std::memcpy(vc.data() + 2 * i, &hv, 2);
          } else {
            std::memcpy(kc.data() + 4 * i, &k[i], 4);
            std::memcpy(vc.data() + 4 * i, &v[i], 4);
          }
        }
        DeviceBuffer<uint8_t> d_kc(kc), d_vc(vc);
        DeviceBuffer<float> d_q(q), d_out(n_tokens * q_dim);
        DeviceBuffer<int32_t> d_pos(positions), d_off(offsets), d_table(table);
        const AttentionParams p{shape.n_head, shape.n_head_kv, shape.head_dim, f16};
        DeviceBuffer<float> partials(attention_partials_floats(p, n_tokens, n_splits));
        attention(p, d_q.get(), d_kc.get(), d_vc.get(), d_pos.get(), d_off.get(), d_table.get(), n_tokens, n_splits,
                  partials.get(), d_out.get(), nullptr);

        std::vector<float> want(n_tokens * q_dim);
        const int group = shape.n_head / shape.n_head_kv, hd = shape.head_dim;
        for (int t = 0; t < n_tokens; ++t) {
          const int n_keys = positions[t] + 1;
          for (int h = 0; h < shape.n_head; ++h) {
            std::vector<float> keys(n_keys * hd), values(n_keys * hd), scores(n_keys);
            for (int j = 0; j < n_keys; ++j) {
              const size_t at = static_cast<size_t>(table[offsets[t] + j]) * kv_dim + (h / group) * hd;
              std::copy_n(k_stored.begin() + at, hd, keys.begin() + j * hd);
              std::copy_n(v_stored.begin() + at, hd, values.begin() + j * hd);
            }
            cpu::attend(q.data() + t * q_dim + h * hd, keys.data(), values.data(), hd, n_keys, hd,
                        1.0f / std::sqrt(static_cast<float>(hd)), f16, scores.data(), want.data() + t * q_dim + h * hd);
          }
        }
        // The CPU rounds softmax weights to f16 (ggml's f16 path); the GPU keeps them in f32.
        expect_close(d_out.download(), want, f16 ? 2e-3 : 2e-5, 0,
                     "attention heads " + std::to_string(shape.n_head) + "/" + std::to_string(shape.n_head_kv) +
                         " dim " + std::to_string(hd) + (f16 ? " f16" : " f32") + " splits " +
                         std::to_string(n_splits));
      }
    }
  }
}

}  // namespace
}  // namespace tessera::cuda
