// Every CUDA op against the CPU reference (src/quant's dequantize_row_ref, src/backend/cpu/ops.h) on random
// inputs with odd sizes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/device_layout.h"
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

// What the GPU's Q8Rows hold for the rows x (whole 32-value blocks, row after row): the integers of the CPU engine's
// activation quantizer (quant::quantize_activations to Q8_1, whose blocks are f16 d, f16 s, int8 qs[32]), with d = amax
// / 127 and s = d * sum(q) kept in f32.
struct HostQ8 {
  std::vector<int8_t> q;
  std::vector<float> d, s;
};

HostQ8 quantize_q8_cpu(const std::vector<float>& x) {
  constexpr int64_t kBlock = 32, kQ8_1Bytes = 36;
  HostQ8 out;
  std::vector<uint8_t> blocks(quant::activation_row_bytes(GgmlType::Q4_1, static_cast<int64_t>(x.size())));
  quant::quantize_activations(GgmlType::Q4_1, x.data(), blocks.data(), static_cast<int64_t>(x.size()));
  for (size_t b = 0; b < x.size() / kBlock; ++b) {
    float amax = 0;
    int sum = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      amax = std::max(amax, std::fabs(x[b * kBlock + i]));
      const int8_t q = static_cast<int8_t>(blocks[b * kQ8_1Bytes + 4 + i]);
      out.q.push_back(q);
      sum += q;
    }
    out.d.push_back(amax / 127.0f);
    out.s.push_back(out.d.back() * static_cast<float>(sum));
  }
  return out;
}

std::vector<float> dequantize_q8_cpu(const HostQ8& xq) {
  std::vector<float> x(xq.q.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(xq.q[i]) * xq.d[i / 32];
  return x;
}

// A matrix given as file rows, uploaded in the device layout as the backend uploads weights (device_layout.h).
class DeviceWeights {
 public:
  DeviceWeights(GgmlType type, const std::vector<uint8_t>& file_rows, int64_t n_rows, int64_t n_cols)
      : buffer_(device_row_bytes(type, n_cols) * n_rows),
        matrix_{type, buffer_.get(), device_row_bytes(type, n_cols), n_cols, n_rows} {
    std::vector<uint8_t> rows(device_row_bytes(type, n_cols) * n_rows);
    to_device_layout(type, file_rows.data(), n_rows, n_cols, rows.data());
    buffer_.upload(rows);
  }
  const DeviceMatrix& matrix() const { return matrix_; }

 private:
  DeviceBuffer<uint8_t> buffer_;
  DeviceMatrix matrix_;
};

// Device Q8Rows of n_rows x n values, and their contents on the host.
struct DeviceQ8 {
  DeviceQ8(int64_t n_rows, int64_t n) : q(n_rows * n), ds(n_rows * n / 32), rows{q.get(), ds.get(), n} {}
  HostQ8 download() const {
    HostQ8 out;
    for (const int8_t v : q.download()) out.q.push_back(v);
    for (const float2 v : ds.download()) out.d.push_back(v.x), out.s.push_back(v.y);
    return out;
  }
  DeviceBuffer<int8_t> q;
  DeviceBuffer<float2> ds;
  Q8Rows rows;
};

void expect_same_q8(const HostQ8& got, const HostQ8& want, const std::string& what) {
  ASSERT_EQ(got.q.size(), want.q.size()) << what;
  size_t bad_q = 0;
  for (size_t i = 0; i < got.q.size(); ++i) bad_q += got.q[i] != want.q[i];
  EXPECT_EQ(bad_q, 0u) << what << ": quants differ";
  EXPECT_EQ(got.d, want.d) << what << ": scales differ";
  EXPECT_EQ(got.s, want.s) << what << ": sums differ";
}

const GgmlType kAllTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                              GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                              GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

class CudaTypes : public ::testing::TestWithParam<GgmlType> {};

void matvec_case(const std::array<GgmlType, 3>& types, int64_t n_cols, std::initializer_list<int> token_counts);

TEST_P(CudaTypes, DequantizeMatchesReference) {
  TESSERA_REQUIRE_GPU();
  const GgmlType type = GetParam();
  const int64_t n_rows = 7, n_cols = 768;
  const std::vector<uint8_t> bytes = random_matrix(type, n_rows, n_cols, 11);
  const std::vector<float> want = dequantize_ref(type, bytes, n_rows, n_cols);
  const DeviceWeights w(type, bytes, n_rows, n_cols);
  const DeviceMatrix& m = w.matrix();
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
// 3328 columns with 8 tokens take two shared-memory tiles of x. The integer kernels (matvec_reads_q8) take x
// quantized by quantize_q8, and the reference multiplies with that quantized x (the CPU engine's integers);
// there 11008 columns (Llama-2-7B's FFN width) take several passes per row, Q8_0 and Q4_0 blocks (34, 18 bytes)
// are only 2-byte aligned (every other one starts 2 bytes past a 4-byte boundary), and Q6_K's device rows
// (device_layout.h) end in padding at all three widths.
TEST_P(CudaTypes, MatvecMatchesReference) {
  TESSERA_REQUIRE_GPU();
  for (const int64_t n_cols : {768, 3328, 11008}) {
    matvec_case({GetParam(), GetParam(), GetParam()}, n_cols, {1, 3, 8});
  }
}

// Q6_K rows on the device hold every super-block's ql, then their qh, scales and d, at a 16-byte stride; the other
// types keep the file's rows. Checked byte by byte (no GPU needed).
TEST(CudaOps, DeviceLayoutGroupsQ6KFields) {
  const int64_t n_rows = 3, n_cols = 768, n_blocks = 3;
  const size_t file_row = ggml_row_bytes(GgmlType::Q6_K, n_cols);
  ASSERT_EQ(file_row, 630u);
  ASSERT_EQ(device_row_bytes(GgmlType::Q6_K, n_cols), 640u);
  const std::vector<uint8_t> file = random_matrix(GgmlType::Q6_K, n_rows, n_cols, 5);
  std::vector<uint8_t> device(640 * n_rows, 0xAA);
  to_device_layout(GgmlType::Q6_K, file.data(), n_rows, n_cols, device.data());
  size_t misplaced = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* src = file.data() + r * file_row;
    const uint8_t* dst = device.data() + r * 640;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const uint8_t* block = src + 210 * b;
      for (int i = 0; i < 128; ++i) misplaced += dst[128 * b + i] != block[i];
      for (int i = 0; i < 64; ++i) misplaced += dst[128 * n_blocks + 64 * b + i] != block[128 + i];
      for (int i = 0; i < 16; ++i) misplaced += dst[192 * n_blocks + 16 * b + i] != block[192 + i];
      for (int i = 0; i < 2; ++i) misplaced += dst[208 * n_blocks + 2 * b + i] != block[208 + i];
    }
    for (size_t i = file_row; i < 640; ++i) misplaced += dst[i] != 0;
  }
  EXPECT_EQ(misplaced, 0u);

  const std::vector<uint8_t> q4 = random_matrix(GgmlType::Q4_K, n_rows, n_cols, 6);
  ASSERT_EQ(device_row_bytes(GgmlType::Q4_K, n_cols), ggml_row_bytes(GgmlType::Q4_K, n_cols));
  std::vector<uint8_t> q4_device(q4.size());
  to_device_layout(GgmlType::Q4_K, q4.data(), n_rows, n_cols, q4_device.data());
  EXPECT_EQ(q4_device, q4);
}

// A Q4_K_M layer's Wq, Wk (Q4_K) and Wv (Q6_K) share a one-token launch at every width (both read 64-value units,
// 2 rows per thread); more tokens, another order or another type cannot, and a second switch of type is refused.
TEST(CudaOps, MatvecMixesQ4KAndQ6K) {
  TESSERA_REQUIRE_GPU();
  const GgmlType q4 = GgmlType::Q4_K, q6 = GgmlType::Q6_K;
  for (const int64_t n_cols : {768, 2048, 3328, 4096, 11008}) {
    ASSERT_TRUE(matvec_mixes_types(q4, q6, n_cols, 1)) << n_cols;
    matvec_case({q4, q4, q6}, n_cols, {1});
    matvec_case({q4, q6, q6}, n_cols, {1});
  }
  EXPECT_FALSE(matvec_mixes_types(q4, q6, 4096, 2));
  EXPECT_FALSE(matvec_mixes_types(q6, q4, 4096, 1));
  EXPECT_FALSE(matvec_mixes_types(q4, GgmlType::Q8_0, 4096, 1));
  const std::vector<uint8_t> bytes(ggml_row_bytes(q6, 4096) * 8);
  DeviceBuffer<uint8_t> w(bytes);
  DeviceBuffer<float> y(8);
  DeviceQ8 xq(1, 4096);
  const MatvecJob jobs[3] = {{DeviceMatrix{q4, w.get(), ggml_row_bytes(q4, 4096), 4096, 8}, y.get(), 8, false},
                             {DeviceMatrix{q6, w.get(), ggml_row_bytes(q6, 4096), 4096, 8}, y.get(), 8, false},
                             {DeviceMatrix{q4, w.get(), ggml_row_bytes(q4, 4096), 4096, 8}, y.get(), 8, false}};
  EXPECT_THROW(matvec(jobs, 3, nullptr, 4096, xq.rows, 1, nullptr), std::runtime_error);
}

void matvec_case(const std::array<GgmlType, 3>& types, int64_t n_cols, std::initializer_list<int> token_counts) {
  const int64_t rows[3] = {37, 5, 64};
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::unique_ptr<DeviceWeights>> weights;
  for (int j = 0; j < 3; ++j) {
    bytes.push_back(random_matrix(types[j], rows[j], n_cols, 100 + j));
    weights.push_back(std::make_unique<DeviceWeights>(types[j], bytes.back(), rows[j], n_cols));
  }
  const bool q8 = matvec_reads_q8(types[0]);
  for (int n_tokens : token_counts) {
    std::vector<float> x = random_floats(n_tokens * n_cols, -1, 1, 7 + n_tokens);
    DeviceBuffer<float> d_x(x);
    DeviceQ8 d_xq(n_tokens, n_cols);
    if (q8) {
      quantize_q8(d_x.get(), n_cols, n_tokens, d_xq.rows, nullptr);
      x = dequantize_q8_cpu(quantize_q8_cpu(x));
    }
    std::vector<std::unique_ptr<DeviceBuffer<float>>> ys;
    std::vector<std::vector<float>> initial;
    MatvecJob jobs[3];
    for (int j = 0; j < 3; ++j) {
      initial.push_back(random_floats(n_tokens * rows[j], -1, 1, 50 + j));
      ys.push_back(std::make_unique<DeviceBuffer<float>>(initial.back()));
      jobs[j] = MatvecJob{weights[j]->matrix(), ys[j]->get(), rows[j], j == 1};
    }
    matvec(jobs, 3, d_x.get(), n_cols, q8 ? d_xq.rows : Q8Rows{}, n_tokens, nullptr);
    for (int j = 0; j < 3; ++j) {
      const std::vector<float> w = dequantize_ref(types[j], bytes[j], rows[j], n_cols);
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
                   std::string(ggml_type_name(types[j])) + " matrix " + std::to_string(j) + ", tokens " +
                       std::to_string(n_tokens) + ", columns " + std::to_string(n_cols));
    }
  }
}

// y = W x for one matrix against the CPU: the dequantized weights times x in double.
std::vector<float> matvec_ref(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n_rows, int64_t n_cols,
                              const std::vector<float>& x, int n_tokens, double& max_abs) {
  const std::vector<float> w = dequantize_ref(type, bytes, n_rows, n_cols);
  std::vector<float> y(n_tokens * n_rows);
  for (int t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_rows; ++r) {
      double sum = 0;
      for (int64_t i = 0; i < n_cols; ++i) sum += static_cast<double>(w[r * n_cols + i]) * x[t * n_cols + i];
      y[t * n_rows + r] = static_cast<float>(sum);
      max_abs = std::max(max_abs, std::fabs(sum));
    }
  }
  return y;
}

// A fused RMSNorm (NormOutput -> NormScale). The producer (residual add y += W a, as a Wo or down projection)
// must leave y, y * weight quantized (the CPU's integers for those floats) and each 32 values' sum of squares; a
// consumer reading them must give W2 rmsnorm(y), its x quantized per 32 values (the CPU rounds after scaling, the
// GPU before: equal up to f32 rounding, so the tolerance is the plain matvec test's). Every integer type as
// producer and consumer, one pass and several per row, 1..8 tokens, and the mixed Q4_K/Q6_K consumer.
TEST(CudaOps, FusedRmsNormMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};
  const float eps = 1e-5f;
  struct Case {
    int64_t n, n_in;  // norm width (the producer's rows), the producer's input width
  };
  for (const Case c : {Case{2048, 768}, Case{4096, 11008}, Case{96, 2048}}) {
    const std::vector<float> norm_weight = random_floats(c.n, 0.5f, 1.5f, 9);
    DeviceBuffer<float> d_norm_weight(norm_weight);
    for (int producer_index = 0; producer_index < 5; ++producer_index) {
      const GgmlType producer = kTypes[producer_index];
      const std::vector<uint8_t> w1 = random_matrix(producer, c.n, c.n_in, 11);
      const DeviceWeights d_w1(producer, w1, c.n, c.n_in);
      for (const int n_tokens : {1, 3, 8}) {
        const std::string what = std::string(ggml_type_name(producer)) + " producer, n " + std::to_string(c.n) +
                                 ", tokens " + std::to_string(n_tokens);
        const std::vector<float> a = random_floats(n_tokens * c.n_in, -1, 1, 12 + n_tokens);
        const std::vector<float> y0 = random_floats(n_tokens * c.n, -2, 2, 13);
        DeviceBuffer<float> d_a(a), d_y(y0);
        DeviceQ8 d_aq(n_tokens, c.n_in), d_norm_q8(n_tokens, c.n);
        DeviceBuffer<float> d_sums(n_tokens * c.n / 32);
        quantize_q8(d_a.get(), c.n_in, n_tokens, d_aq.rows, nullptr);
        const MatvecJob job{d_w1.matrix(), d_y.get(), c.n, true};
        ASSERT_TRUE(matvec_fuses_norm(job.w)) << what;
        matvec_norm(job, d_aq.rows, n_tokens, NormOutput{d_norm_weight.get(), d_norm_q8.rows, d_sums.get()}, nullptr);

        double max_abs = 0;
        std::vector<float> want_y =
            matvec_ref(producer, w1, c.n, c.n_in, dequantize_q8_cpu(quantize_q8_cpu(a)), n_tokens, max_abs);
        for (size_t i = 0; i < want_y.size(); ++i) want_y[i] += y0[i];
        const std::vector<float> y = d_y.download();
        expect_close(y, want_y, 2e-5 * (max_abs + 2), 1e-5, what + ": residual");
        std::vector<float> weighted(y.size());
        for (size_t i = 0; i < y.size(); ++i) weighted[i] = y[i] * norm_weight[i % c.n];
        expect_same_q8(d_norm_q8.download(), quantize_q8_cpu(weighted), what + ": weighted q8");
        std::vector<float> want_sums(n_tokens * c.n / 32);
        for (size_t i = 0; i < y.size(); ++i) want_sums[i / 32] += y[i] * y[i];
        expect_close(d_sums.download(), want_sums, 0, 1e-5, what + ": sums of squares");

        // The consumer: x = rmsnorm(y) dequantized as the GPU holds it, times the row's 1 / rms.
        std::vector<float> x = dequantize_q8_cpu(d_norm_q8.download());
        for (int t = 0; t < n_tokens; ++t) {
          double square_sum = 0;
          for (int64_t i = 0; i < c.n; ++i) square_sum += static_cast<double>(y[t * c.n + i]) * y[t * c.n + i];
          const double scale = 1.0 / std::sqrt(square_sum / c.n + eps);
          for (int64_t i = 0; i < c.n; ++i) x[t * c.n + i] = static_cast<float>(x[t * c.n + i] * scale);
        }
        const NormScale norm{d_sums.get(), static_cast<int>(c.n), eps};
        // Rows of 96 are too short for the K types.
        const int n_consumer_types = c.n % 256 == 0 ? 5 : 2;
        const GgmlType consumer = kTypes[(producer_index + n_tokens) % n_consumer_types];
        const bool mixed = n_tokens == 1 && matvec_mixes_types(GgmlType::Q4_K, GgmlType::Q6_K, c.n, 1);
        const GgmlType types[2] = {mixed ? GgmlType::Q4_K : consumer, mixed ? GgmlType::Q6_K : consumer};
        const int64_t rows[2] = {37, 64};
        MatvecJob jobs[2];
        std::vector<std::vector<uint8_t>> w2;
        std::vector<std::unique_ptr<DeviceWeights>> d_w2;
        std::vector<std::unique_ptr<DeviceBuffer<float>>> d_out;
        for (int j = 0; j < 2; ++j) {
          w2.push_back(random_matrix(types[j], rows[j], c.n, 20 + j));
          d_w2.push_back(std::make_unique<DeviceWeights>(types[j], w2.back(), rows[j], c.n));
          d_out.push_back(std::make_unique<DeviceBuffer<float>>(n_tokens * rows[j]));
          jobs[j] = MatvecJob{d_w2[j]->matrix(), d_out[j]->get(), rows[j], false};
        }
        matvec(jobs, mixed ? 2 : 1, nullptr, c.n, d_norm_q8.rows, n_tokens, nullptr, norm);
        for (int j = 0; j < (mixed ? 2 : 1); ++j) {
          double out_max = 0;
          const std::vector<float> want = matvec_ref(types[j], w2[j], rows[j], c.n, x, n_tokens, out_max);
          expect_close(d_out[j]->download(), want, 2e-5 * (out_max + 1), 1e-5,
                       what + ", " + std::string(ggml_type_name(types[j])) + " consumer");
        }
      }
    }
  }
}

// Gate/up with SwiGLU fused (matvec_swiglu): the quantized output against silu(g) * u from the CPU reference
// matvecs, quantized on the CPU. The GPU's f32 sums differ from the reference in the last bits, so a value may round
// to the neighbouring integer: each dequantized value must be within one step (its block's d) of the CPU's, and
// every block scale within 0.1%. Every integer type, one pass and two per row (Q4_K at 4096), with and without a
// fused norm scale.
TEST(CudaOps, FusedSwigluMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};
  const float eps = 1e-5f;
  struct Case {
    int64_t n_rows, n_cols;
  };
  for (const Case c : {Case{352, 4096}, Case{160, 2048}, Case{64, 768}}) {
    const std::vector<float> x = random_floats(c.n_cols, -1, 1, 31);
    DeviceBuffer<float> d_x(x);
    DeviceQ8 d_xq(1, c.n_cols), d_out(1, c.n_rows);
    quantize_q8(d_x.get(), c.n_cols, 1, d_xq.rows, nullptr);
    std::vector<float> sums(c.n_cols / 32);
    double square_sum = 0;
    for (int64_t i = 0; i < c.n_cols; ++i) sums[i / 32] += x[i] * x[i], square_sum += static_cast<double>(x[i]) * x[i];
    DeviceBuffer<float> d_sums(sums);
    const std::vector<float> x_seen = dequantize_q8_cpu(quantize_q8_cpu(x));
    for (const GgmlType type : kTypes) {
      if (c.n_cols % 256 != 0 && type != GgmlType::Q4_0 && type != GgmlType::Q8_0) continue;
      const std::vector<uint8_t> gate = random_matrix(type, c.n_rows, c.n_cols, 32);
      const std::vector<uint8_t> up = random_matrix(type, c.n_rows, c.n_cols, 33);
      const DeviceWeights d_gate(type, gate, c.n_rows, c.n_cols), d_up(type, up, c.n_rows, c.n_cols);
      const DeviceMatrix &w_gate = d_gate.matrix(), &w_up = d_up.matrix();
      ASSERT_TRUE(matvec_fuses_swiglu(w_gate, w_up));
      for (const bool scaled : {false, true}) {
        const std::string what = std::string(ggml_type_name(type)) + ", " + std::to_string(c.n_rows) + " x " +
                                 std::to_string(c.n_cols) + (scaled ? ", norm-scaled" : "");
        const NormScale norm = scaled ? NormScale{d_sums.get(), static_cast<int>(c.n_cols), eps} : NormScale{};
        matvec_swiglu(w_gate, w_up, d_xq.rows, norm, d_out.rows, nullptr);
        double max_abs = 0;
        const std::vector<float> g = matvec_ref(type, gate, c.n_rows, c.n_cols, x_seen, 1, max_abs);
        const std::vector<float> u = matvec_ref(type, up, c.n_rows, c.n_cols, x_seen, 1, max_abs);
        const double scale = scaled ? 1.0 / std::sqrt(square_sum / c.n_cols + eps) : 1.0;
        std::vector<float> h(c.n_rows);
        for (int64_t i = 0; i < c.n_rows; ++i) {
          const double gi = g[i] * scale, ui = u[i] * scale;
          h[i] = static_cast<float>(gi / (1.0 + std::exp(-gi)) * ui);
        }
        const HostQ8 got = d_out.download(), want = quantize_q8_cpu(h);
        const std::vector<float> got_values = dequantize_q8_cpu(got), want_values = dequantize_q8_cpu(want);
        size_t bad = 0;
        for (int64_t i = 0; i < c.n_rows; ++i) {
          bad += !(std::fabs(got_values[i] - want_values[i]) <= 1.001 * want.d[i / 32] + 1e-7);
        }
        EXPECT_EQ(bad, 0u) << what << ": values more than one step from the CPU's";
        for (size_t b = 0; b < want.d.size(); ++b) {
          EXPECT_NEAR(got.d[b], want.d[b], 1e-3 * want.d[b] + 1e-9) << what << ", block " << b;
        }
      }
    }
  }
}

// call() must be refused with a std::runtime_error whose message names `why`: without a GPU a launch would fail
// too, with another message.
template <class Call>
void expect_refused(Call&& call, const std::string& why) {
  try {
    call();
    ADD_FAILURE() << "not refused: " << why;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

// Host stand-ins for the device pointers of the refusal tests: nothing is launched, so nothing is read.
struct Placeholders {
  int8_t q[2];
  float2 ds[2];
  float f[1];
  uint8_t bytes[1];
  DeviceMatrix matrix(GgmlType type, int64_t n_rows, int64_t n_cols) {
    return DeviceMatrix{type, bytes, device_row_bytes(type, n_cols), n_cols, n_rows};
  }
};

// What the fused RMSNorm cannot take is refused before anything is launched (no GPU needed): a type without an
// integer kernel, rows that are not whole Q8 blocks or over kMaxFusedNormWidth, a producer that does not
// accumulate, mismatched Q8 rows, a bad token count; and a norm scale on an f32-kernel launch or of the wrong width.
TEST(CudaOps, FusedRmsNormRefusesWhatItCannotTake) {
  Placeholders p;
  const Q8Rows xq{p.q, p.ds, 256}, out{p.q, p.ds, 64};
  const NormOutput norm{p.f, out, p.f};
  const MatvecJob good{p.matrix(GgmlType::Q4_K, 64, 256), p.f, 64, true};
  EXPECT_TRUE(matvec_fuses_norm(good.w));
  EXPECT_FALSE(matvec_fuses_norm(p.matrix(GgmlType::F16, 64, 256)));
  EXPECT_FALSE(matvec_fuses_norm(p.matrix(GgmlType::Q4_K, 48, 256)));
  EXPECT_FALSE(matvec_fuses_norm(p.matrix(GgmlType::Q4_K, kMaxFusedNormWidth + 32, 256)));
  MatvecJob job = good;
  job.w = p.matrix(GgmlType::F16, 64, 256);
  const std::string cannot = "needs an integer-kernel type", bad_q8 = "bad Q8 input or output";
  expect_refused([&] { matvec_norm(job, xq, 1, norm, nullptr); }, cannot);
  job = good;
  job.accumulate = false;
  expect_refused([&] { matvec_norm(job, xq, 1, norm, nullptr); }, cannot);
  expect_refused([&] { matvec_norm(good, Q8Rows{p.q, p.ds, 512}, 1, norm, nullptr); }, bad_q8);
  expect_refused([&] { matvec_norm(good, xq, 1, NormOutput{p.f, Q8Rows{p.q, p.ds, 96}, p.f}, nullptr); }, bad_q8);
  expect_refused([&] { matvec_norm(good, xq, 0, norm, nullptr); }, "bad token count");
  expect_refused([&] { matvec_norm(good, xq, kMaxMatvecTokens + 1, norm, nullptr); }, "bad token count");

  const MatvecJob f16_job{p.matrix(GgmlType::F16, 64, 256), p.f, 64, false};
  expect_refused(
      [&] {
        matvec(&f16_job, 1, p.f, 256, Q8Rows{}, 1, nullptr, NormScale{p.f, 256, 1e-5f});
      },
      "needs an integer-kernel weight type");
  const MatvecJob q4_job{p.matrix(GgmlType::Q4_K, 64, 256), p.f, 64, false};
  expect_refused(
      [&] {
        matvec(&q4_job, 1, p.f, 256, xq, 1, nullptr, NormScale{p.f, 512, 1e-5f});
      },
      "bad fused-norm width");
}

// What matvec_swiglu cannot take is refused before anything is launched (no GPU needed): matrices of different
// types or shapes, a type without an integer kernel, rows that are not whole Q8 blocks, Q8 rows of the wrong width
// or an output that is the input, a norm scale of the wrong width.
TEST(CudaOps, FusedSwigluRefusesWhatItCannotTake) {
  Placeholders p;
  const DeviceMatrix gate = p.matrix(GgmlType::Q4_K, 64, 256), up = gate;
  const Q8Rows xq{p.q, p.ds, 256}, out{p.q + 1, p.ds + 1, 64};
  EXPECT_TRUE(matvec_fuses_swiglu(gate, up));
  EXPECT_FALSE(matvec_fuses_swiglu(gate, p.matrix(GgmlType::Q6_K, 64, 256)));
  EXPECT_FALSE(matvec_fuses_swiglu(gate, p.matrix(GgmlType::Q4_K, 96, 256)));
  EXPECT_FALSE(matvec_fuses_swiglu(gate, p.matrix(GgmlType::Q4_K, 64, 512)));
  EXPECT_FALSE(matvec_fuses_swiglu(p.matrix(GgmlType::F16, 64, 256), p.matrix(GgmlType::F16, 64, 256)));
  EXPECT_FALSE(matvec_fuses_swiglu(p.matrix(GgmlType::Q4_K, 48, 256), p.matrix(GgmlType::Q4_K, 48, 256)));
  const std::string cannot = "needs two matrices", bad_q8 = "bad Q8 input or output";
  expect_refused([&] { matvec_swiglu(gate, p.matrix(GgmlType::Q6_K, 64, 256), xq, {}, out, nullptr); }, cannot);
  expect_refused([&] { matvec_swiglu(gate, up, Q8Rows{p.q, p.ds, 512}, {}, out, nullptr); }, bad_q8);
  expect_refused([&] { matvec_swiglu(gate, up, xq, {}, Q8Rows{p.q + 1, p.ds + 1, 96}, nullptr); }, bad_q8);
  expect_refused([&] { matvec_swiglu(gate, up, xq, {}, Q8Rows{p.q, p.ds, 64}, nullptr); }, bad_q8);
  expect_refused(
      [&] {
        matvec_swiglu(gate, up, xq, NormScale{p.f, 512, 1e-5f}, out, nullptr);
      },
      "bad fused-norm width");
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
  const DeviceWeights d_w(type, bytes, n_rows, n_cols);
  DeviceBuffer<float> d_x(x), d_y(y0);
  DeviceBuffer<__half> x16(n_tokens * n_cols), w16(n_rows * n_cols);
  convert_f32_to_f16(d_x.get(), x16.get(), n_tokens * n_cols, nullptr);
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const DeviceMatrix& m = d_w.matrix();
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

// One width for each block shape (256 x 8, 512 x 8, 1024 x 16 threads x values).
TEST(CudaOps, RmsNormMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  for (const int n : {333, 3001, 9000}) {
    const int n_rows = 5;
    const std::vector<float> x = random_floats(n * n_rows, -2, 2, 1), w = random_floats(n, 0.5f, 1.5f, 2);
    const std::vector<int32_t> rows = {4, 1, 3};
    DeviceBuffer<float> d_x(x), d_w(w), d_y(rows.size() * n);
    DeviceBuffer<int32_t> d_rows(rows);
    rms_norm(d_x.get(), d_rows.get(), d_w.get(), d_y.get(), nullptr, Q8Rows{}, static_cast<int64_t>(rows.size()), n,
             1e-5f, nullptr);
    std::vector<float> want(rows.size() * n);
    for (size_t r = 0; r < rows.size(); ++r)
      cpu::rms_norm(x.data() + rows[r] * n, w.data(), want.data() + r * n, n, 1e-5f);
    expect_close(d_y.download(), want, 1e-6, 1e-5, "rms_norm " + std::to_string(n));
  }
}

// quantize_q8 gives the CPU engine's activation integers, for rows read out of a wider matrix.
TEST(CudaOps, QuantizeQ8MatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const int n_rows = 3, n = 96, ldx = 100;
  std::vector<float> x = random_floats(n_rows * ldx, -3, 3, 8);
  std::fill_n(x.begin() + ldx + 32, 32, 0.0f);  // an all-zero block: d = 0, q = 0
  DeviceBuffer<float> d_x(x);
  DeviceQ8 d_q8(n_rows, n);
  quantize_q8(d_x.get(), ldx, n_rows, d_q8.rows, nullptr);
  std::vector<float> rows;
  for (int r = 0; r < n_rows; ++r) rows.insert(rows.end(), x.begin() + r * ldx, x.begin() + r * ldx + n);
  expect_same_q8(d_q8.download(), quantize_q8_cpu(rows), "quantize_q8");
}

// RMSNorm and SwiGLU quantize their outputs on the way for decode: the same integers as quantizing those outputs.
TEST(CudaOps, FusedQ8OutputsMatchCpu) {
  TESSERA_REQUIRE_GPU();
  const int n = 352, n_rows = 3;
  const std::vector<float> x = random_floats(n * n_rows, -2, 2, 1), w = random_floats(n, 0.5f, 1.5f, 2);
  DeviceBuffer<float> d_x(x), d_w(w), d_y(n * n_rows);
  DeviceQ8 d_q8(n_rows, n);
  rms_norm(d_x.get(), nullptr, d_w.get(), d_y.get(), nullptr, d_q8.rows, n_rows, n, 1e-5f, nullptr);
  expect_same_q8(d_q8.download(), quantize_q8_cpu(d_y.download()), "rms_norm q8");

  const std::vector<float> g = random_floats(n * n_rows, -6, 6, 3), u = random_floats(n * n_rows, -2, 2, 4);
  DeviceBuffer<float> d_g(g), d_u(u), d_out(n * n_rows);
  DeviceQ8 d_sq8(n_rows, n);
  swiglu(d_g.get(), d_u.get(), d_out.get(), nullptr, d_sq8.rows, n * n_rows, nullptr);
  expect_same_q8(d_sq8.download(), quantize_q8_cpu(d_out.download()), "swiglu q8");
}

TEST(CudaOps, SwigluMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  const int n = 1001;
  const std::vector<float> g = random_floats(n, -6, 6, 1), u = random_floats(n, -2, 2, 2);
  DeviceBuffer<float> d_g(g), d_u(u), d_out(n);
  DeviceBuffer<__half> d_out16(n);
  swiglu(d_g.get(), d_u.get(), d_out.get(), d_out16.get(), Q8Rows{}, n, nullptr);
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
    rope_and_store_kv(p, d_q.get(), d_k.get(), d_v.get(), d_pos.get(), d_slots.get(), n_tokens, KvCache{k_cache.get()},
                      KvCache{v_cache.get()}, f16 ? KvFormat::F16 : KvFormat::F32, nullptr);
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

// The CPU reference of paged attention with GQA: for token t and query head h, cpu::attend over the keys and
// values (as the cache stores them) of slots table[first_slot[t] + j], j <= positions[t].
std::vector<float> attention_reference(const std::vector<float>& q, const std::vector<float>& k_stored,
                                       const std::vector<float>& v_stored, const std::vector<int32_t>& table,
                                       const std::vector<int32_t>& first_slot, const std::vector<int32_t>& positions,
                                       int n_head, int n_head_kv, int hd, bool f16) {
  const int n_tokens = static_cast<int>(positions.size()), q_dim = n_head * hd, kv_dim = n_head_kv * hd;
  const int group = n_head / n_head_kv;
  std::vector<float> out(static_cast<size_t>(n_tokens) * q_dim);
  for (int t = 0; t < n_tokens; ++t) {
    const int n_keys = positions[t] + 1;
    for (int h = 0; h < n_head; ++h) {
      std::vector<float> keys(n_keys * hd), values(n_keys * hd), scores(n_keys);
      for (int j = 0; j < n_keys; ++j) {
        const size_t at = static_cast<size_t>(table[first_slot[t] + j]) * kv_dim + (h / group) * hd;
        std::copy_n(k_stored.begin() + at, hd, keys.begin() + j * hd);
        std::copy_n(v_stored.begin() + at, hd, values.begin() + j * hd);
      }
      cpu::attend(q.data() + t * q_dim + h * hd, keys.data(), values.data(), hd, n_keys, hd,
                  1.0f / std::sqrt(static_cast<float>(hd)), f16, scores.data(), out.data() + t * q_dim + h * hd);
    }
  }
  return out;
}

constexpr int kBlock = 16;  // KV block size of the attention tests

// The cache slot of every position of sequences with these KV blocks (kBlock positions each), concatenated: the
// per-position table attention_reference reads.
std::vector<int32_t> slots_of_blocks(const std::vector<int32_t>& blocks, int block_size = kBlock) {
  std::vector<int32_t> slots;
  for (int32_t b : blocks) {
    for (int j = 0; j < block_size; ++j) slots.push_back(b * block_size + j);
  }
  return slots;
}

// The first n_blocks of a shuffled list of the cache's blocks (paged, non-contiguous).
std::vector<int32_t> shuffled_blocks(int n_cache_blocks, int n_blocks, uint32_t seed) {
  std::vector<int32_t> perm(n_cache_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  perm.resize(n_blocks);
  return perm;
}

AttentionParams attention_params(int n_head, int n_head_kv, int head_dim, bool f16, int max_decode_heads = 0,
                                 int block_size = kBlock) {
  AttentionParams p;
  p.n_head = n_head;
  p.n_head_kv = n_head_kv;
  p.head_dim = head_dim;
  p.k_format = p.v_format = f16 ? KvFormat::F16 : KvFormat::F32;
  p.kv_block_shift = 0;
  while ((1 << p.kv_block_shift) < block_size) ++p.kv_block_shift;
  p.max_decode_heads = max_decode_heads;
  return p;
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
        const int n_slots = 20 * kBlock, kv_dim = shape.n_head_kv * shape.head_dim,
                  q_dim = shape.n_head * shape.head_dim;
        // Two sequences: tokens 0-1 of sequence 0 (positions 250, 251; 16 blocks), token 2 of sequence 1 (position
        // 0), token 3 of sequence 1 at position 40 (3 blocks); blocks are shuffled (paged).
        const std::vector<int32_t> blocks = shuffled_blocks(20, 19, 3);
        const std::vector<int32_t> positions = {250, 251, 0, 40};
        const std::vector<int32_t> block_offsets = {0, 0, 16, 16}, offsets = {0, 0, 16 * kBlock, 16 * kBlock};
        const std::vector<int32_t> table = slots_of_blocks(blocks);
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
        DeviceBuffer<int32_t> d_pos(positions), d_off(block_offsets), d_table(blocks);
        const AttentionParams p = attention_params(shape.n_head, shape.n_head_kv, shape.head_dim, f16);
        DeviceBuffer<float> partials(attention_partials_floats(p, n_tokens, n_splits));
        attention(p, d_q.get(), KvCache{d_kc.get()}, KvCache{d_vc.get()}, d_pos.get(), nullptr, d_off.get(),
                  d_table.get(), n_tokens, n_splits, partials.get(), d_out.get(), nullptr);

        const int hd = shape.head_dim;
        const std::vector<float> want = attention_reference(q, k_stored, v_stored, table, offsets, positions,
                                                            shape.n_head, shape.n_head_kv, hd, f16);
        // The CPU rounds softmax weights to f16 (ggml's f16 path); the GPU keeps them in f32.
        expect_close(d_out.download(), want, f16 ? 2e-3 : 2e-5, 0,
                     "attention heads " + std::to_string(shape.n_head) + "/" + std::to_string(shape.n_head_kv) +
                         " dim " + std::to_string(hd) + (f16 ? " f16" : " f32") + " splits " +
                         std::to_string(n_splits));
      }
    }
  }
}

// Decode attention with RoPE and the KV store fused in, against cpu::rope_angles/apply_rope + cpu::attend: six
// tokens of three sequences in one step - three consecutive tokens continuing a sequence of 606 cached keys across a
// block boundary (each must see the new keys of the tokens before it, which this launch writes), positions 0 and 40
// of a second sequence, position 5 of a third; KV blocks shuffled (paged), and the new tokens' slots hold garbage
// before the step. Blocks of 16 slots, and for one shape of 8 and 32 too. GQA
// shapes with one and several blocks per KV head, partial rotation with freq_factors, f16/f32 cache, 1 split (several
// shared-memory tiles per block for the long sequence), 2 and 7 splits; the Q8 output against quantizing the output.
// Each with the default query heads per block and with up to 8 (one block for all query heads of a KV head).
TEST(CudaOps, DecodeAttentionMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  struct Variant {
    bool f16;
    int max_heads;
  };
  const Shape shapes[] = {{6, 2, 80}, {32, 2, 64}, {8, 4, 8}, {4, 4, 128}, {32, 4, 64}};
  for (const Shape shape : shapes) {
    for (const Variant variant : {Variant{true, 0}, Variant{false, 0}, Variant{true, 8}, Variant{false, 8}}) {
      const bool other_block_sizes = &shape == &shapes[0] && variant.f16 && variant.max_heads == 0;
      for (const int block : other_block_sizes ? std::vector<int>{16, 8, 32} : std::vector<int>{16}) {
        const bool f16 = variant.f16;
        const AttentionParams p =
            attention_params(shape.n_head, shape.n_head_kv, shape.head_dim, f16, variant.max_heads, block);
        ASSERT_TRUE(decode_attention_supported(p));
        decode_attention_prepare(p);
        for (int n_splits : {1, 2, 7}) {
          const int hd = shape.head_dim, kv_dim = shape.n_head_kv * hd, q_dim = shape.n_head * hd;
          // Sequences of 609, 41 and 6 positions, in shuffled (paged) blocks.
          const int32_t lengths[] = {609, 41, 6};
          std::vector<int32_t> sequence_blocks;
          int n_blocks = 0;
          for (int32_t length : lengths) {
            sequence_blocks.push_back(n_blocks);
            n_blocks += (length + block - 1) / block;
          }
          const int n_slots = (n_blocks + 2) * block;
          const std::vector<int32_t> blocks = shuffled_blocks(n_blocks + 2, n_blocks, 5);
          const std::vector<int32_t> table = slots_of_blocks(blocks, block);
          const std::vector<int32_t> positions = {606, 607, 608, 0, 40, 5};
          const std::vector<int32_t> block_offsets = {sequence_blocks[0], sequence_blocks[0], sequence_blocks[0],
                                                      sequence_blocks[1], sequence_blocks[1], sequence_blocks[2]};
          std::vector<int32_t> offsets;
          for (int32_t b : block_offsets) offsets.push_back(b * block);
          const int n_tokens = static_cast<int>(positions.size());
          std::vector<int32_t> write_slots(n_tokens);
          for (int t = 0; t < n_tokens; ++t) write_slots[t] = table[offsets[t] + positions[t]];

          model::RopeConfig rc;
          rc.n_dims = hd >= 16 ? hd - 8 : hd;
          rc.freq_base = 10000;
          rc.freq_scale = 0.5f;
          rc.freq_factors = random_floats(rc.n_dims / 2, 1, 4, 13);
          DeviceBuffer<float> d_ff(rc.freq_factors);
          const RopeParams rope{
              shape.n_head,  shape.n_head_kv, hd, rc.n_dims, std::pow(rc.freq_base, -2.0f / rc.n_dims),
              rc.freq_scale, d_ff.get()};

          // The cache before the step (garbage in the new tokens' slots) and after it (what the kernel must store).
          std::vector<float> k_cache = random_floats(n_slots * kv_dim, -1, 1, 10),
                             v_cache = random_floats(n_slots * kv_dim, -1, 1, 11);
          for (int32_t slot : write_slots) {
            std::fill_n(k_cache.begin() + slot * kv_dim, kv_dim, 300.0f);
            std::fill_n(v_cache.begin() + slot * kv_dim, kv_dim, -300.0f);
          }
          const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 12),
                                   k = random_floats(n_tokens * kv_dim, -1, 1, 14),
                                   v = random_floats(n_tokens * kv_dim, -1, 1, 15);
          std::vector<float> q_rot = q, k_after = k_cache, v_after = v_cache;
          for (int t = 0; t < n_tokens; ++t) {
            const cpu::RopeAngles angles = cpu::rope_angles(rc, positions[t]);
            cpu::apply_rope(q_rot.data() + t * q_dim, shape.n_head, hd, angles);
            std::vector<float> k_rot(k.begin() + t * kv_dim, k.begin() + (t + 1) * kv_dim);
            cpu::apply_rope(k_rot.data(), shape.n_head_kv, hd, angles);
            std::copy(k_rot.begin(), k_rot.end(), k_after.begin() + write_slots[t] * kv_dim);
            std::copy_n(v.begin() + t * kv_dim, kv_dim, v_after.begin() + write_slots[t] * kv_dim);
          }
          auto to_cache = [&](const std::vector<float>& x) {
            std::vector<uint8_t> bytes(x.size() * (f16 ? 2 : 4));
            for (size_t i = 0; i < x.size(); ++i) {
              if (f16) {
                const uint16_t h = quant::fp32_to_fp16(x[i]);
                std::memcpy(bytes.data() + 2 * i, &h, 2);
              } else {
                std::memcpy(bytes.data() + 4 * i, &x[i], 4);
              }
            }
            return bytes;
          };
          auto from_cache = [&](const std::vector<uint8_t>& bytes) {
            std::vector<float> x(bytes.size() / (f16 ? 2 : 4));
            for (size_t i = 0; i < x.size(); ++i) {
              if (f16) {
                uint16_t h;
                std::memcpy(&h, bytes.data() + 2 * i, 2);
                x[i] = quant::fp16_to_fp32(h);
              } else {
                std::memcpy(&x[i], bytes.data() + 4 * i, 4);
              }
            }
            return x;
          };
          const std::vector<float> k_stored = from_cache(to_cache(k_after)), v_stored = from_cache(to_cache(v_after));

          DeviceBuffer<uint8_t> d_kc(to_cache(k_cache)), d_vc(to_cache(v_cache));
          DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_out(n_tokens * q_dim);
          DeviceBuffer<int32_t> d_pos(positions), d_off(block_offsets), d_table(blocks), d_write(write_slots);
          DeviceBuffer<float> partials(attention_partials_floats(p, n_tokens, n_splits));
          const bool with_q8 = decode_attention_fuses_q8(p);
          DeviceQ8 d_q8(n_tokens, q_dim);
          decode_attention(p, rope, d_q.get(), d_k.get(), d_v.get(), d_pos.get(), nullptr, d_write.get(), d_off.get(),
                           d_table.get(), n_tokens, n_splits, KvCache{d_kc.get()}, KvCache{d_vc.get()}, partials.get(),
                           d_out.get(), with_q8 ? d_q8.rows : Q8Rows{}, nullptr);

          const std::vector<float> want = attention_reference(q_rot, k_stored, v_stored, table, offsets, positions,
                                                              shape.n_head, shape.n_head_kv, hd, f16);
          const std::string what =
              "decode attention heads " + std::to_string(shape.n_head) + "/" + std::to_string(shape.n_head_kv) +
              " dim " + std::to_string(hd) + (f16 ? " f16" : " f32") + " splits " + std::to_string(n_splits) +
              " heads per block at most " + std::to_string(variant.max_heads) + " blocks of " + std::to_string(block);
          const std::vector<float> got = d_out.download();
          // The CPU rounds softmax weights to f16 (ggml's f16 path); the GPU keeps them in f32.
          expect_close(got, want, f16 ? 2e-3 : 2e-5, 0, what);
          expect_close(from_cache(d_kc.download()), k_stored, 2e-6, f16 ? 1e-3 : 1e-5, what + " k cache");
          expect_close(from_cache(d_vc.download()), v_stored, 0, 0, what + " v cache");
          if (with_q8) expect_same_q8(d_q8.download(), quantize_q8_cpu(got), what + " q8");
        }
      }
    }
  }
}

// Flash prompt attention on the tensor cores against cpu::attend: two sequences in one step, 37 tokens of a fresh
// sequence (positions 0..36) and 300 tokens continuing one with 20 cached keys (positions 20..319), KV blocks
// shuffled (paged), f16 cache. GQA groups of 1, 3, 4 and 8 (blocks that end part-way through
// a token's heads and past the last token); head dims 8 and 40 (padded with zeros to the mma's 16), 64, 80 and 128
// (key tiles of 64 and 32, several per block and a partial last one).
TEST(CudaOps, PromptAttentionMatchesCpu) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  for (const Shape shape :
       {Shape{6, 2, 80}, Shape{16, 2, 64}, Shape{4, 4, 64}, Shape{8, 2, 8}, Shape{4, 1, 40}, Shape{8, 8, 128}}) {
    const int n_slots = 25 * kBlock, kv_dim = shape.n_head_kv * shape.head_dim, q_dim = shape.n_head * shape.head_dim;
    const int hd = shape.head_dim;
    const AttentionParams p = attention_params(shape.n_head, shape.n_head_kv, hd, true);
    ASSERT_TRUE(prompt_attention_supported(p));
    // Blocks, shuffled: sequence 0's 37 positions (3 blocks), then sequence 1's 320 (20 blocks).
    const std::vector<int32_t> blocks = shuffled_blocks(25, 23, 5);
    const std::vector<int32_t> table = slots_of_blocks(blocks);
    const int offset0 = 0, offset1 = 3 * kBlock;
    // Step: sequence 0's 37 tokens, then sequence 1's 300.
    std::vector<int32_t> positions, seq_of;
    for (int i = 0; i < 37; ++i) positions.push_back(i), seq_of.push_back(0);
    for (int i = 0; i < 300; ++i) positions.push_back(20 + i), seq_of.push_back(1);
    const int n_tokens = static_cast<int>(positions.size());
    const PromptSequence sequences[2] = {{0, 37, 0, 37}, {37, 300, 3, 320}};

    const std::vector<float> k = random_floats(n_slots * kv_dim, -1, 1, 20),
                             v = random_floats(n_slots * kv_dim, -1, 1, 21);
    // Queries of up to +-4 so that the softmax has large scores to keep apart (and the running maximum moves).
    const std::vector<float> q = random_floats(n_tokens * q_dim, -4, 4, 22);
    std::vector<uint8_t> kc(n_slots * kv_dim * 2), vc(kc.size());
    std::vector<float> k_stored(k.size()), v_stored(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k_stored[i] = cpu::round_to_f16(k[i]);
      v_stored[i] = cpu::round_to_f16(v[i]);
      const uint16_t hk = quant::fp32_to_fp16(k[i]), hv = quant::fp32_to_fp16(v[i]);
      std::memcpy(kc.data() + 2 * i, &hk, 2);
      std::memcpy(vc.data() + 2 * i, &hv, 2);
    }
    std::vector<int32_t> first_slot;
    for (int t = 0; t < n_tokens; ++t) first_slot.push_back(seq_of[t] == 0 ? offset0 : offset1);
    const std::vector<float> want = attention_reference(q, k_stored, v_stored, table, first_slot, positions,
                                                        shape.n_head, shape.n_head_kv, hd, true);

    DeviceBuffer<uint8_t> d_kc(kc), d_vc(vc);
    DeviceBuffer<float> d_q(q), d_out(n_tokens * q_dim);
    DeviceBuffer<__half> d_out16(n_tokens * q_dim);
    DeviceBuffer<int32_t> d_pos(positions), d_table(blocks);
    prompt_attention(p, d_q.get(), KvCache{d_kc.get()}, KvCache{d_vc.get()}, d_pos.get(), nullptr, d_table.get(),
                     sequences, 2, d_out.get(), d_out16.get(), nullptr);
    const std::vector<float> got = d_out.download();
    const std::string what = "prompt attention heads " + std::to_string(shape.n_head) + "/" +
                             std::to_string(shape.n_head_kv) + " dim " + std::to_string(hd);
    // Both round the weights to f16: the CPU after normalizing them, the GPU before (by the running maximum).
    expect_close(got, want, 2e-3, 0, what);
    const std::vector<__half> got16 = d_out16.download();
    std::vector<float> got16_f(got16.size()), got_rounded(got.size());
    for (size_t i = 0; i < got.size(); ++i) {
      got16_f[i] = __half2float(got16[i]);
      got_rounded[i] = cpu::round_to_f16(got[i]);
    }
    expect_close(got16_f, got_rounded, 0, 0, what + " f16 copy");
  }
}

// What the flash kernel does not take: an f32 cache, head dims past 128 or not a multiple of 8.
TEST(CudaOps, PromptAttentionRefusesWhatItCannotTake) {
  EXPECT_TRUE(prompt_attention_supported(attention_params(32, 8, 128, true)));
  EXPECT_FALSE(prompt_attention_supported(attention_params(32, 8, 128, false)));
  EXPECT_FALSE(prompt_attention_supported(attention_params(8, 8, 256, true)));
  EXPECT_FALSE(prompt_attention_supported(attention_params(8, 8, 36, true)));
}

// The GEMM path's decode to f16 for every type, on a matrix of 37 rows (several 128-chunk blocks and a partial
// last one for every chunk size): the f16 rounding of the reference values. The device's f32 values match the
// reference to 1e-6 (DequantizeMatchesReference), which may move a value across an f16 rounding boundary: one f16
// step, 2^-10 relative.
TEST(CudaOps, DequantizeToF16MatchesReference) {
  TESSERA_REQUIRE_GPU();
  const int64_t n_rows = 37, n_cols = 768;
  for (const GgmlType type : kAllTypes) {
    const std::vector<uint8_t> bytes = random_matrix(type, n_rows, n_cols, 21);
    std::vector<float> want = dequantize_ref(type, bytes, n_rows, n_cols);
    for (float& v : want) v = __half2float(__float2half_rn(v));
    const DeviceWeights w(type, bytes, n_rows, n_cols);
    const DeviceMatrix& m = w.matrix();
    DeviceBuffer<__half> out(n_rows * n_cols);
    dequantize_rows_f16(m, nullptr, n_rows, out.get(), nullptr);
    const std::vector<__half> got16 = out.download();
    std::vector<float> got(got16.size());
    for (size_t i = 0; i < got.size(); ++i) got[i] = __half2float(got16[i]);
    expect_close(got, want, 1e-6, 1.0 / 1024, std::string(ggml_type_name(type)) + " f16 rows");
  }
}

}  // namespace
}  // namespace tessera::cuda
