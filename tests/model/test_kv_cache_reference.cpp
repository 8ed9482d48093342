// The KV cache's features on the CPU against the f64 reference forward (model::reference_logits), which can round
// keys, values and queries as each cache format does: sliding windows (the model's, and --kv-window with sinks), the
// cache formats, keys and values in different formats, and the context shift. The same checks run on CUDA
// (common/kv_cache_checks.h).
#include <gtest/gtest.h>

#include "common/kv_cache_checks.h"

namespace tessera {
namespace {

// The CPU's float arithmetic stays within this of the reference on these models.
constexpr double kCpuTolerance = 2e-4;

TEST(KvCacheReference, SlidingWindowFromTheModel) {
  for (const KvFormat format : {KvFormat::F32, KvFormat::F16, KvFormat::Q8_0}) {
    test::check_sliding_window_from_the_model("cpu", format, format == KvFormat::F32 ? kCpuTolerance : 2e-3);
  }
}

TEST(KvCacheReference, KvWindowWithSinks) { test::check_kv_window_with_sinks("cpu", KvFormat::F32, kCpuTolerance); }

TEST(KvCacheReference, CacheFormatsMatchASimulationOfTheirRounding) {
  test::check_cache_formats_against_simulation("cpu", kCpuTolerance);
}

TEST(KvCacheReference, KeysAndValuesInDifferentFormats) {
  test::check_keys_and_values_in_different_formats("cpu", kCpuTolerance);
}

TEST(KvCacheReference, ContextShiftEqualsAFreshEvaluation) { test::check_context_shift("cpu", 1e-5); }

}  // namespace
}  // namespace tessera
