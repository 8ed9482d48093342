#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"

namespace tessera::cpu {
namespace {

// rms_norm sums its squares in eight running sums; against one long double sum, at sizes around the eight-wide
// steps and a model's widths.
TEST(RmsNorm, MatchesAPlainDoubleSumAtOddSizes) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int n : {1, 5, 7, 8, 9, 15, 16, 17, 2048, 4096 + 3}) {
    std::vector<float> x(n), weight(n), y(n);
    for (int i = 0; i < n; ++i) {
      x[i] = normal(rng) * (i % 3 == 0 ? 100.0f : 1.0f);
      weight[i] = 1.0f + 0.1f * normal(rng);
    }
    const float eps = 1e-5f;
    rms_norm(x.data(), weight.data(), y.data(), n, eps);
    long double sum = 0;
    for (float v : x) sum += static_cast<long double>(v) * v;
    const double scale = 1.0 / std::sqrt(static_cast<double>(sum / n) + eps);
    for (int i = 0; i < n; ++i) {
      const double want = x[i] * scale * weight[i];
      ASSERT_NEAR(y[i], want, 2e-6 * std::fabs(want) + 1e-30) << "n " << n << ", i " << i;
    }
  }
}

}  // namespace
}  // namespace tessera::cpu
