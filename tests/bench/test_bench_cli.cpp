// `tessera synth` and `tessera bench` through the binary: JSON fields, exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <unistd.h>

#include "common/run_tessera.h"

namespace {

using Result = tessera::test::CommandResult;

Result run(const std::string& args) { return tessera::test::run_tessera(args); }

// Runs `tessera ARGS --output json` and parses what it prints; a failed run fails the test and gives null (invalid
// JSON throws, which fails it too).
nlohmann::json run_json(const std::string& args) {
  const Result r = run(args + " --output json");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json();
}

class BenchCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("tessera-bench-test-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    model_ = (dir_ / "tiny-Q4_K_M.gguf").string();
    synth_exit_ = run("synth --preset tiny --type Q4_K_M --seed 3 -o " + model_).exit_code;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  static std::filesystem::path dir_;
  static std::string model_;
  static int synth_exit_;
};
std::filesystem::path BenchCli::dir_;
std::string BenchCli::model_;
int BenchCli::synth_exit_ = -1;

TEST_F(BenchCli, SynthWritesAFile) {
  ASSERT_EQ(synth_exit_, 0);
  EXPECT_GT(std::filesystem::file_size(model_), 100000u);
}

TEST_F(BenchCli, JsonHasOneObjectPerTestWithTheRequiredFields) {
  ASSERT_EQ(synth_exit_, 0);
  const nlohmann::json j = run_json("bench -m " + model_ + " -p 32 -n 8 -r 2 -t 1");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["test"], "pp32");
  EXPECT_EQ(j[1]["test"], "tg8");
  for (const nlohmann::json& o : j) {
    EXPECT_GT(o["tokens_per_s"].get<double>(), 0.0) << o.dump();
    EXPECT_GE(o["stddev"].get<double>(), 0.0);
    EXPECT_EQ(o["samples_ts"].size(), 2u);
    EXPECT_EQ(o["backend"], "cpu");
    EXPECT_EQ(o["threads"], 1);
    EXPECT_GT(o["model_bytes"].get<uint64_t>(), 100000u);
    EXPECT_LT(o["model_bytes"].get<uint64_t>(), std::filesystem::file_size(model_));
  }
  EXPECT_GT(j[1]["weights_gb_s"].get<double>(), 0.0);
}

TEST_F(BenchCli, MarkdownTableHasARowPerTest) {
  ASSERT_EQ(synth_exit_, 0);
  const Result r = run("bench -m " + model_ + " -p 16 -n 4 -r 1 -t 1");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("| model |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| pp16 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg4 |"), std::string::npos) << r.out;
}

TEST_F(BenchCli, TakesTheEngineOptionsOfRun) {
  ASSERT_EQ(synth_exit_, 0);
  const nlohmann::json j = run_json("bench -m " + model_ + " -p 8 -n 2 -r 1 -t 1 --cache-type f32");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["threads"], 1);
  // The CPU's model name where /proc/cpuinfo gives one, then its family and model numbers and the thread count.
  const std::string device = j[0]["device"].get<std::string>();
  EXPECT_NE(device.find("1 thread)"), std::string::npos) << device;
  EXPECT_GT(device.size(), std::string(" (1 thread)").size()) << device;
  EXPECT_TRUE(j[0]["weight_prefetch"] == "none" || j[0]["weight_prefetch"] == "nta" || j[0]["weight_prefetch"] == "l1")
      << j[0].dump();
  EXPECT_GT(j[1]["tokens_per_s"].get<double>(), 0.0);
}

TEST_F(BenchCli, MembwProbeReportsBandwidth) {
  const nlohmann::json j = run_json("bench --membw --membw-mib 128 -t 1");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["test"], "membw");
  EXPECT_EQ(j[0]["threads"], 1);
  // Any machine this runs on streams between 0.5 GB/s and 2 TB/s.
  EXPECT_GT(j[0]["membw_gb_s"].get<double>(), 0.5);
  EXPECT_LT(j[0]["membw_gb_s"].get<double>(), 2000.0);
  EXPECT_GE(j[0]["membw_gb_s"].get<double>(), j[0]["membw_median_gb_s"].get<double>());
}

TEST_F(BenchCli, GenerationWithMembwProbesBesideEachRepetition) {
  ASSERT_EQ(synth_exit_, 0);
  const nlohmann::json j = run_json("bench -m " + model_ + " -p 0 -n 4 -r 2 -t 1 --membw --membw-mib 64");
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["test"], "tg4");
  // One probe before the first repetition and one after each.
  const std::vector<double> probes = j[0]["membw_adjacent_gb_s"].get<std::vector<double>>();
  ASSERT_EQ(probes.size(), 3u);
  for (double gb_s : probes) EXPECT_GT(gb_s, 0.5);
  // The tiny model's weights are far smaller than the last-level cache, so a 256 MiB buffer is read instead.
  EXPECT_EQ(j[0]["membw_adjacent_source"], "buffer");
  EXPECT_EQ(j[0]["membw_adjacent_bytes"].get<uint64_t>(), uint64_t{256} << 20);
  // The mean of each repetition's weight bandwidth over the better probe beside it.
  const std::vector<double> samples = j[0]["samples_ts"].get<std::vector<double>>();
  ASSERT_EQ(samples.size(), 2u);
  const double bytes = j[0]["model_bytes"].get<double>();
  const double first = bytes * samples[0] / 1e9 / std::max(probes[0], probes[1]);
  const double second = bytes * samples[1] / 1e9 / std::max(probes[1], probes[2]);
  const double expected = (first + second) / 2;
  EXPECT_NEAR(j[0]["membw_adjacent_fraction"].get<double>(), expected, 1e-9 * expected);
}

TEST_F(BenchCli, BadArgumentsExitWithTwo) {
  EXPECT_EQ(run("bench -m " + model_ + " -p -1 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench -m " + model_ + " -r 0 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench -m " + model_ + " --output xml 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench -m " + model_ + " --backend tpu 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench -m " + model_ + " --cache-type f8 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("bench --membw --membw-mib 1 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("synth --preset nope -o /dev/null 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("synth --preset tiny --type Q9_Z -o /dev/null 2>/dev/null").exit_code, 2);
  EXPECT_EQ(run("synth --preset tiny 2>/dev/null").exit_code, 2);
}

TEST_F(BenchCli, MissingModelIsARuntimeError) {
  EXPECT_EQ(run("bench -m " + (dir_ / "absent.gguf").string() + " 2>/dev/null").exit_code, 1);
}

}  // namespace
