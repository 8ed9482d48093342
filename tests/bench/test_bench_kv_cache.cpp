// `tessera bench` with the KV cache options: it reports the cache type and size, and -d starts each test at a
// given context depth.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "common/run_tessera.h"

namespace tessera {
namespace {

nlohmann::json bench_json(const std::string& args) {
  const test::CommandResult r = test::run_tessera("bench -m " + test::fixture("models/tiny-llama-Q8_0.gguf").string() +
                                                  " -r 1 -t 1 --output json " + args);
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json::array();
}

TEST(BenchKvCache, ReportsCacheTypeSizeAndDepth) {
  const nlohmann::json f16 = bench_json("-p 16 -n 4");
  const nlohmann::json q8 = bench_json("-p 16 -n 4 -d 64 --cache-type-k q8_0 --cache-type-v q4_0");
  ASSERT_EQ(f16.size(), 2u);
  ASSERT_EQ(q8.size(), 2u);
  EXPECT_EQ(f16[1]["test"], "tg4");
  EXPECT_EQ(q8[0]["test"], "pp16 @ d64");
  EXPECT_EQ(q8[1]["test"], "tg4 @ d64");
  EXPECT_EQ(q8[1]["n_depth"], 64);
  EXPECT_EQ(f16[1]["cache_type_k"], "f16");
  EXPECT_EQ(q8[1]["cache_type_k"], "q8_0");
  EXPECT_EQ(q8[1]["cache_type_v"], "q4_0");
  // The context holds max(p, n) + d tokens: 16 and 80, in f16 and in q8_0 keys with q4_0 values.
  const double per_token_f16 = 2.0 * 2 * 128 * 2;  // layers, keys and values, kv_dim, bytes
  EXPECT_EQ(f16[1]["kv_cache_bytes"].get<double>(), 16 * per_token_f16);
  EXPECT_DOUBLE_EQ(q8[1]["kv_cache_bytes"].get<double>(), 80 * per_token_f16 * (34.0 + 18.0) / 128);
  EXPECT_GT(q8[1]["tokens_per_s"].get<double>(), 0.0);

  const test::CommandResult md = test::run_tessera(
      "bench -m " + test::fixture("models/tiny-llama-Q8_0.gguf").string() + " -r 1 -t 1 -p 0 -n 2 --cache-type q4_0");
  ASSERT_EQ(md.exit_code, 0) << md.err;
  EXPECT_NE(md.out.find("KV cache: q4_0, "), std::string::npos) << md.out;
}

TEST(BenchKvCache, NegativeDepthIsAUsageError) {
  const test::CommandResult r =
      test::run_tessera("bench -m " + test::fixture("models/tiny-llama-Q8_0.gguf").string() + " -d -1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("-d must not be negative"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tessera
