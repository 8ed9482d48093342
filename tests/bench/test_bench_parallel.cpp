// `tessera bench --parallel` through the binary on a fixture model: one JSON object per sequence count whose token
// counts and rates add up, the llama-batched-bench table, and the arguments it refuses.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "common/fixtures.h"
#include "common/run_tessera.h"

namespace {

using tessera::test::fixture;
using tessera::test::run_tessera;

std::string model() { return fixture("models/tiny-llama-Q4_K_M.gguf").string(); }

nlohmann::json run_json(const std::string& args) {
  const tessera::test::CommandResult r = run_tessera("bench -m " + model() + " " + args + " --output json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json();
}

double num(const nlohmann::json& o, const char* field) { return o.at(field).get<double>(); }

// The rates are the token counts over the mean times: both ways of reading a result give the same figure.
void expect_rates_add_up(const nlohmann::json& o) {
  const double pp_s = num(o, "pp_seconds"), tg_s = num(o, "tg_seconds");
  const double pp = num(o, "pp_tokens"), tg = num(o, "tg_tokens");
  if (pp > 0) {
    EXPECT_GT(pp_s, 0.0);
    EXPECT_NEAR(num(o, "pp_tokens_per_s") * pp_s, pp, 1e-6 * pp) << o.dump();
  } else {
    EXPECT_EQ(num(o, "pp_tokens_per_s"), 0.0);
  }
  EXPECT_GT(tg_s, 0.0);
  EXPECT_NEAR(num(o, "tg_tokens_per_s") * tg_s, tg, 1e-6 * tg) << o.dump();
  EXPECT_NEAR(num(o, "total_tokens_per_s") * (pp_s + tg_s), num(o, "n_kv"), 1e-6 * num(o, "n_kv")) << o.dump();
  EXPECT_EQ(num(o, "tokens_per_s"), num(o, "total_tokens_per_s"));
}

TEST(BenchParallel, OneObjectPerSequenceCountWithTokenCountsThatAddUp) {
  const nlohmann::json j = run_json("--parallel 1,4 -p 8 -n 4 -r 2 -t 1");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 2u);
  const int counts[] = {1, 4};
  for (size_t i = 0; i < 2; ++i) {
    const nlohmann::json& o = j[i];
    const int n = counts[i];
    EXPECT_EQ(o["test"], "pp8+tg4");
    EXPECT_EQ(o["parallel"], n);
    EXPECT_EQ(o["n_prompt"], 8);
    EXPECT_EQ(o["n_gen"], 4);
    EXPECT_EQ(o["shared_prompt"], false);
    EXPECT_EQ(o["pp_tokens"], 8 * n);
    EXPECT_EQ(o["tg_tokens"], 4 * n);
    EXPECT_EQ(o["n_kv"], 12 * n);
    expect_rates_add_up(o);
    EXPECT_EQ(o["samples_ts"].size(), 2u);
    EXPECT_GE(num(o, "stddev"), 0.0);
    // The fields every bench result has.
    EXPECT_EQ(o["backend"], "cpu");
    EXPECT_EQ(o["threads"], 1);
    EXPECT_EQ(o["model_type"], "Q4_K_M");
    EXPECT_GT(num(o, "model_bytes"), 100000.0);
    EXPECT_NE(o["device"].get<std::string>().find("1 thread)"), std::string::npos) << o["device"];
  }
}

// One prompt evaluated once, its blocks shared: the KV cache holds it once, and its rate counts it once.
TEST(BenchParallel, SharedPromptCountsThePromptOnce) {
  const nlohmann::json j = run_json("--parallel 3 -p 20 -n 5 -r 1 -t 1 --shared-prompt");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["shared_prompt"], true);
  EXPECT_EQ(j[0]["pp_tokens"], 20);
  EXPECT_EQ(j[0]["tg_tokens"], 15);
  EXPECT_EQ(j[0]["n_kv"], 35);
  expect_rates_add_up(j[0]);
}

// A batch smaller than the prompts splits them between steps; without a prompt only generation is timed.
TEST(BenchParallel, PromptsSplitBetweenStepsAndAnEmptyPrompt) {
  const nlohmann::json split = run_json("--parallel 3 -p 7 -n 2 -r 1 -t 2 -b 5");
  ASSERT_EQ(split.size(), 1u) << split.dump();
  EXPECT_EQ(split[0]["n_batch"], 5);
  EXPECT_EQ(split[0]["pp_tokens"], 21);
  expect_rates_add_up(split[0]);
  const nlohmann::json empty = run_json("--parallel 2 -p 0 -n 3 -r 1 -t 1");
  ASSERT_EQ(empty.size(), 1u) << empty.dump();
  EXPECT_EQ(empty[0]["pp_tokens"], 0);
  EXPECT_EQ(empty[0]["n_kv"], 6);
  expect_rates_add_up(empty[0]);
}

TEST(BenchParallel, MarkdownHasTheBatchedBenchColumnsAndARowPerCount) {
  const tessera::test::CommandResult r = run_tessera("bench -m " + model() + " --parallel 2,3 -p 4 -n 2 -r 1 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("| 4 | 2 | 2 | 12 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| 4 | 2 | 3 | 18 |"), std::string::npos) << r.out;
}

TEST(BenchParallel, BadArgumentsExitWithTwo) {
  const std::string m = "bench -m " + model();
  EXPECT_EQ(run_tessera(m + " --parallel 0 -p 4 -n 2").exit_code, 2);
  EXPECT_EQ(run_tessera(m + " --parallel 1,x -p 4 -n 2").exit_code, 2);
  EXPECT_EQ(run_tessera(m + " --parallel 2 -p 4 -n 2 -b 0").exit_code, 2);
  EXPECT_EQ(run_tessera(m + " --parallel 2 -p 4 -n 2 --membw").exit_code, 2);
  EXPECT_EQ(run_tessera(m + " --shared-prompt -p 4 -n 2").exit_code, 2);
  EXPECT_EQ(run_tessera("bench --parallel 2 --membw").exit_code, 2);
}

}  // namespace
