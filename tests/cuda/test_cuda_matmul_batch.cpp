// matmul_batch against the CPU reference: quant::dequantize_row_ref's weights and the activations, each rounded to
// f16 (what the kernel hands the tensor cores), multiplied in double. For every type at the token counts of a decode
// step of 1..256 sequences (every token tile: 16, 32, 64, 128, partly filled), a matrix of two row blocks with a
// partial second one and a long one of 11 k-tiles, each with the device's plan, without K splits, with one k-tile per
// split, with half the shared memory (fewer stages, smaller tiles) and with 16-token tiles (many token blocks); with
// and without accumulate.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/device_layout.h"
#include "backend/cuda/matmul_batch.h"
#include "cuda/batch_test_util.h"
#include "cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using test::DeviceBuffer;

const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

struct Product {
  std::vector<float> y;      // the exact product (plus y0 when accumulating)
  std::vector<float> scale;  // sum over the row of |w16 x16|: the size of the f32 accumulation's rounding
};

Product reference(const std::vector<float>& w16, const std::vector<float>& x16, const std::vector<float>& y0,
                  int64_t n_rows, int64_t n_cols, int n_tokens, int64_t ldy, bool accumulate) {
  Product p{std::vector<float>(y0), std::vector<float>(y0.size(), 0.0f)};
  for (int t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_rows; ++r) {
      double sum = accumulate ? y0[t * ldy + r] : 0.0, scale = 0;
      for (int64_t c = 0; c < n_cols; ++c) {
        const double term = static_cast<double>(w16[r * n_cols + c]) * x16[t * n_cols + c];
        sum += term;
        scale += std::fabs(term);
      }
      p.y[t * ldy + r] = static_cast<float>(sum);
      p.scale[t * ldy + r] = static_cast<float>(scale);
    }
  }
  return p;
}

// Each product is exact in f32 (f16 x f16), so what is left is the f32 accumulation: about one rounding per k-step
// of 16 columns relative to the running sum, bounded by 1e-4 of sum |w x| at these widths (up to 176 k-steps; a
// single wrong column costs ~1e-3 of it). The padding past n_rows in each y row must stay as it was.
void expect_product(const std::vector<float>& got, const Product& want, int64_t n_rows, int64_t ldy,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.y.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool padding = static_cast<int64_t>(i % ldy) >= n_rows;
    const double limit = padding ? 0.0 : 1e-4 * want.scale[i] + 1e-6 * std::fabs(want.y[i]) + 1e-6;
    const double diff = std::fabs(static_cast<double>(got[i]) - want.y[i]);
    if (!(diff <= limit)) ++bad;
    const double excess = std::isnan(diff) ? 1e30 : diff - limit;
    if (excess > worst_excess) worst_excess = excess, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " values off; worst at token " << worst / ldy
                     << " row " << worst % ldy << ": got " << got[worst] << ", want " << want.y[worst];
}

void check_type(GgmlType type, int64_t n_rows, int64_t n_cols, int n_tokens, uint32_t seed) {
  const std::vector<uint8_t> file = test::random_blocks(type, n_rows, n_cols, seed);
  std::vector<float> w16 = test::dequantize_rows(type, file, n_rows, n_cols);
  for (float& v : w16) v = test::round_to_f16(v);
  std::vector<uint8_t> rows(device_row_bytes(type, n_cols) * n_rows);
  to_device_layout(type, file.data(), n_rows, n_cols, rows.data());
  DeviceBuffer<uint8_t> d_w(rows);
  const DeviceMatrix w{type, d_w.get(), device_row_bytes(type, n_cols), n_cols, n_rows};
  ASSERT_TRUE(matmul_batch_supports(w));

  const std::vector<float> x = test::uniform_floats(n_tokens * n_cols, -1, 1, seed + 1);
  std::vector<__half> x_half(x.size());
  std::vector<float> x16(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x_half[i] = __float2half_rn(x[i]);
    x16[i] = __half2float(x_half[i]);
  }
  DeviceBuffer<__half> d_x(x_half);
  const int64_t ldy = n_rows + 3;
  const std::vector<float> y0 = test::uniform_floats(n_tokens * ldy, -1, 1, seed + 2);

  const DeviceLimits device = current_device_limits();
  struct Variant {
    const char* name;
    MatmulBatchPlan plan;
    bool accumulate;
  };
  const Variant variants[] = {
      {"device plan", matmul_batch_plan(w, n_tokens), true},
      {"one split",
       plan_matmul_batch(type, n_rows, n_cols, n_tokens,
                         {1, device.max_shared_per_block, device.shared_per_sm, device.reserved_shared_per_block}),
       false},
      {"k-tile splits",
       plan_matmul_batch(
           type, n_rows, n_cols, n_tokens,
           {1 << 20, device.max_shared_per_block, device.shared_per_sm, device.reserved_shared_per_block}),
       true},
      {"half the shared memory",
       plan_matmul_batch(type, n_rows, n_cols, n_tokens,
                         {device.sm_count, device.max_shared_per_block / 2, device.shared_per_sm / 2,
                          device.reserved_shared_per_block}),
       false},
      {"16-token tiles", plan_matmul_batch(type, n_rows, n_cols, n_tokens, device, 16), true},
  };
  const Product with_y0 = reference(w16, x16, y0, n_rows, n_cols, n_tokens, ldy, true);
  const Product without = reference(w16, x16, y0, n_rows, n_cols, n_tokens, ldy, false);
  for (const Variant& v : variants) {
    const std::string what = std::string(ggml_type_name(type)) + " " + std::to_string(n_rows) + "x" +
                             std::to_string(n_cols) + ", " + std::to_string(n_tokens) + " tokens, " + v.name +
                             " (tile " + std::to_string(v.plan.tile_tokens) + ", " + std::to_string(v.plan.stages) +
                             " stages, " + std::to_string(v.plan.splits) + " splits)" +
                             (v.accumulate ? ", accumulate" : "");
    ASSERT_NE(v.plan.tile_tokens, 0) << what;
    DeviceBuffer<float> d_y(y0);
    const size_t workspace_floats = matmul_batch_workspace_floats(v.plan, w, n_tokens);
    DeviceBuffer<float> workspace(workspace_floats);
    matmul_batch(w, d_x.get(), n_cols, n_tokens, d_y.get(), ldy, v.accumulate, v.plan,
                 workspace_floats > 0 ? workspace.get() : nullptr, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what;
    expect_product(d_y.download(), v.accumulate ? with_y0 : without, n_rows, ldy, what);
  }
}

class CudaMatmulBatch : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaMatmulBatch, MatchesReferenceAtEveryTokenCount) {
  TESSERA_REQUIRE_GPU();
  matmul_batch_prepare();
  const GgmlType type = GetParam();
  uint32_t seed = 100 + 50 * static_cast<uint32_t>(type);
  for (const int n_tokens : {1, 2, 7, 8, 9, 31, 64, 129, 256}) check_type(type, 130, 768, n_tokens, seed += 3);
  for (const int n_tokens : {9, 129}) check_type(type, 45, 2816, n_tokens, seed += 3);
}

INSTANTIATE_TEST_SUITE_P(Types, CudaMatmulBatch, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(ggml_type_name(info.param));
                         });

// Refused before anything is launched: no GPU needed.
TEST(CudaMatmulBatchChecks, RefusesWhatItCannotTake) {
  const DeviceLimits h100{132, 232448, 233472, 1024};
  alignas(16) static uint8_t fake[16];
  const auto* x = reinterpret_cast<const __half*>(fake);
  auto* y = reinterpret_cast<float*>(fake);
  const DeviceMatrix q4k{GgmlType::Q4_K, fake, 144, 256, 64};
  const MatmulBatchPlan plan = plan_matmul_batch(GgmlType::Q4_K, 64, 256, 9, h100);
  ASSERT_EQ(plan.splits, 1);
  auto expect_refused = [](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "not refused: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  EXPECT_FALSE(matmul_batch_supports(GgmlType::Q2_K));
  EXPECT_FALSE(matmul_batch_supports(DeviceMatrix{GgmlType::F16, fake, 512, 256, 64}));
  EXPECT_FALSE(matmul_batch_supports(DeviceMatrix{GgmlType::Q8_0, fake, 34, 32, 64}));  // not a whole tile
  expect_refused(
      [&] {
        matmul_batch(DeviceMatrix{GgmlType::F16, fake, 512, 256, 64}, x, 256, 9, y, 64, false, plan, nullptr, nullptr);
      },
      "no kernel for a F16 matrix");
  expect_refused([&] { matmul_batch(q4k, x, 256, 9, y, 64, false, MatmulBatchPlan{}, nullptr, nullptr); },
                 "the plan does not fit");
  expect_refused([&] { matmul_batch(q4k, x + 1, 256, 9, y, 64, false, plan, nullptr, nullptr); }, "16-byte aligned");
  expect_refused([&] { matmul_batch(q4k, x, 260, 9, y, 64, false, plan, nullptr, nullptr); }, "16-byte aligned");
  expect_refused([&] { matmul_batch(q4k, x, 256, 9, y, 63, false, plan, nullptr, nullptr); }, "ldy >= n_rows");
  MatmulBatchPlan split = plan;
  split.kb_per_split = 1;
  split.splits = 1;
  const DeviceMatrix wide{GgmlType::Q4_K, fake, 288, 512, 64};
  expect_refused([&] { matmul_batch(wide, x, 512, 9, y, 64, false, split, nullptr, nullptr); }, "plan does not fit");
  split.splits = 2;
  expect_refused([&] { matmul_batch(wide, x, 512, 9, y, 64, false, split, nullptr, nullptr); }, "needs a workspace");
}

}  // namespace
}  // namespace tessera::cuda
