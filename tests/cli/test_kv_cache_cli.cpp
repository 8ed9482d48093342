// The KV cache options of `tessera run` through the binary: cache types for keys and values and the size they
// report, the context shift that lets generation run past a full context, the sliding window, and their errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/run_tessera.h"

namespace tessera {
namespace {

using test::run_tessera;

std::string stories() { return test::fixture("trained/stories260K.gguf").string(); }
std::string tiny() { return test::fixture("models/tiny-llama-Q8_0.gguf").string(); }

nlohmann::json run_json(const std::string& args) {
  const auto r = run_tessera("run " + args + " --output json");
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json{};
}

// q8_0 stores 34 bytes and q4_0 18 bytes per 32 values where f16 stores 64 (ggml's blocks): the cache the run
// reports shrinks by those ratios, within the bounds of 0.54 and 0.29.
TEST(KvCacheCli, QuantizedCachesReportTheirSize) {
  const std::string base = "-m " + tiny() + " -p 'Once upon a time' -n 2 --temp 0 -t 1 -c 512 ";
  const double f16 = run_json(base + "--cache-type f16")["kv_cache_bytes"].get<double>();
  const double q8 = run_json(base + "--cache-type q8_0")["kv_cache_bytes"].get<double>();
  const double q4 = run_json(base + "--cache-type q4_0")["kv_cache_bytes"].get<double>();
  const double f32 = run_json(base + "--cache-type f32")["kv_cache_bytes"].get<double>();
  const double mixed = run_json(base + "--cache-type-k q8_0 --cache-type-v q4_0")["kv_cache_bytes"].get<double>();
  // 2 layers x keys and values x 512 slots x 2 KV heads x 64 dims, in f16.
  EXPECT_EQ(f16, 2.0 * 2 * 512 * 128 * 2);
  EXPECT_EQ(f32, 2 * f16);
  EXPECT_DOUBLE_EQ(q8 / f16, 34.0 / 64);
  EXPECT_DOUBLE_EQ(q4 / f16, 18.0 / 64);
  EXPECT_DOUBLE_EQ(mixed / f16, (34.0 + 18.0) / 128);
  EXPECT_LE(q8 / f16, 0.54);
  EXPECT_LE(q4 / f16, 0.29);

  const auto r = run_tessera("run " + base + "--cache-type-k q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("KV cache 512 tokens k q8_0, v f16"), std::string::npos) << r.err;
}

// stories260K's head dimension is 8: its q8_0 blocks span four heads. Its greedy text stays the f16 cache's over
// the first sentences (the quality test checks all 200 tokens).
TEST(KvCacheCli, Q8CacheKeepsStoriesGreedyText) {
  const auto r = run_tessera("run -m " + stories() + " -p 'Once upon a time' -n 12 --temp 0 -t 1 --cache-type q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was a little girl named Lily. She\n");
}

// A 64-token context, 200 tokens to generate: with --context-shift it shifts and finishes by length; without, it
// stops when the context is full. The text up to the first shift is the same.
TEST(KvCacheCli, ContextShiftRunsPastAFullContext) {
  const std::string base = "-m " + stories() + " -p 'Once upon a time' -n 200 --temp 0 -t 1 -c 64 ";
  for (const char* cache : {"f16", "q8_0"}) {
    const nlohmann::json shifted = run_json(base + "--context-shift --keep 1 --cache-type " + std::string(cache));
    const nlohmann::json full = run_json(base + "--cache-type " + std::string(cache));
    EXPECT_EQ(shifted["stop_reason"], "length") << cache;
    EXPECT_EQ(shifted["generated_tokens"].size(), 200u) << cache;
    // (64 - 1) / 2 rounded down to blocks of 16 = 16 tokens per shift after the first fill at 64.
    EXPECT_GE(shifted["context_shifts"].get<int>(), (5 + 200 - 64) / 16) << cache;
    EXPECT_EQ(full["stop_reason"], "context_full") << cache;
    const std::vector<int> a = shifted["generated_tokens"], b = full["generated_tokens"];
    ASSERT_EQ(b.size(), 64u - 5u + 1u);
    EXPECT_EQ(std::vector<int>(a.begin(), a.begin() + 60), b) << cache;
  }
}

// --kv-window keeps only the window's blocks: a long context costs the cache of a short one.
TEST(KvCacheCli, KvWindowBoundsTheCache) {
  const std::string base = "-m " + stories() + " -p 'Once upon a time' -n 100 --temp 0 -t 1 -c 2048 -b 16 ";
  const nlohmann::json windowed = run_json(base + "--kv-window 32 --keep 4");
  const nlohmann::json whole = run_json(base);
  EXPECT_EQ(windowed["generated_tokens"].size(), 100u);
  // Sinks, window and one batch in blocks of 16, and a block more: 16 + 32 + 16 + 16 of 2048 slots.
  EXPECT_EQ(windowed["kv_cache_bytes"].get<double>() / whole["kv_cache_bytes"].get<double>(), 80.0 / 2048);
  // A 32-token window sees the whole of the first 32 positions: the same text there.
  const std::vector<int> a = windowed["generated_tokens"], b = whole["generated_tokens"];
  EXPECT_EQ(std::vector<int>(a.begin(), a.begin() + 27), std::vector<int>(b.begin(), b.begin() + 27));
}

TEST(KvCacheCli, BadCacheOptionsGiveOneLine) {
  struct Case {
    std::string args;
    int exit_code;
    std::string message;
  };
  const std::string m = "run -m " + stories() + " -p 'Once upon a time' -n 4 ";
  const std::vector<Case> cases = {
      {m + "--cache-type-k q3", 2, "--cache-type-k must be f16, f32, bf16, q8_0 or q4_0"},
      {m + "--cache-type-v Q8_0", 2, "--cache-type-v"},
      {m + "--kv-window -1", 2, "--kv-window"},
      {m + "--keep -2", 2, "--keep"},
      {m + "-c 64 --context-shift --keep 40", 1, "nothing to drop"},
  };
  for (const Case& c : cases) {
    const auto r = run_tessera(c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

}  // namespace
}  // namespace tessera
