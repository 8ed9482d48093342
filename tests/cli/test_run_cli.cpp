// `tessera run` and `tessera logits` through the binary, on the fixtures: streaming text, stats, JSON, seeds,
// the default subcommand, and one-line errors with the right exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/run_tessera.h"
#include "common/golden.h"

namespace tessera {
namespace {

using test::run_tessera;

std::string stories() { return test::fixture("trained/stories260K.gguf").string(); }

TEST(RunCli, GreedyTextStreamsToStdoutWithStatsOnStderr) {
  const auto r = run_tessera("run -m " + stories() + " -p 'Once upon a time' -n 12 --temp 0 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was a little girl named Lily. She\n");  // the golden greedy tokens
  EXPECT_NE(r.err.find("prompt: 5 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated: 12 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("first token:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("KV cache"), std::string::npos) << r.err;
}

TEST(RunCli, RunIsTheDefaultSubcommand) {
  const auto r = run_tessera("--model " + stories() + " --backend cpu --max-tokens 3 --temp 0 -t 1 -p 'Once upon a time'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was\n");
}

TEST(RunCli, JsonOutputHasTokensTextAndTimings) {
  const auto r = run_tessera("run -m " + stories() + " -p 'Once upon a time' -n 4 --temp 0 -t 1 --output json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["prompt_tokens"].get<std::vector<int>>(), (std::vector<int>{1, 403, 407, 261, 378}));
  EXPECT_EQ(doc["generated_tokens"].get<std::vector<int>>(), (std::vector<int>{432, 383, 286, 261}));
  EXPECT_EQ(doc["text"], ", there was a");
  EXPECT_EQ(doc["stop_reason"], "length");
  EXPECT_GT(doc["timings"]["generation_tokens_per_s"].get<double>(), 0.0);
}

TEST(RunCli, SameSeedSameTextDifferentSeedDifferentText) {
  const std::string base = "run -m " + stories() + " -p 'Once upon a time' -n 40 --temp 1.0 -t 1 --output json ";
  const auto a = run_tessera(base + "--seed 7"), b = run_tessera(base + "--seed 7"), c = run_tessera(base + "--seed 8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto ta = nlohmann::json::parse(a.out)["generated_tokens"];
  EXPECT_EQ(ta, nlohmann::json::parse(b.out)["generated_tokens"]);
  EXPECT_NE(ta, nlohmann::json::parse(c.out)["generated_tokens"]);
}

TEST(RunCli, ContextFullStopsGeneration) {
  const auto r = run_tessera("run -m " + stories() + " -p 'Once upon a time' -n 100 --temp 0 -t 1 -c 16 --output json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["stop_reason"], "context_full");
  EXPECT_EQ(doc["generated_tokens"].size(), 16u - 5u + 1u);  // the last sampled token needs no cache slot
}

TEST(RunCli, BadInputGivesOneLineAndTheRightExitCode) {
  struct Case {
    std::string args;
    int exit_code;
    std::string message;
  };
  const std::string m = " -m " + stories() + " -p 'Once upon a time' ";
  const std::string not_gguf = test::fixture("README.md").string();
  const std::vector<Case> cases = {
      {"run -m /nonexistent.gguf -p hi", 1, "not found"},
      {"run -m " + not_gguf + " -p hi", 1, "magic"},
      {"run" + m + "-n 0", 2, "--max-tokens"},
      {"run" + m + "--temp -1", 2, "--temp"},
      {"run" + m + "--top-p 0", 2, "--top-p"},
      {"run" + m + "--cache-type q4", 2, "--cache-type"},
      {"run" + m + "--backend tpu", 2, "unknown backend"},
      {"run -m " + stories() + " -p 'a long story about a girl and a dog' -c 16 -n 1", 1, "context"},
      {"run -m " + stories() + " -n 5", 2, "--prompt"},
  };
  for (const Case& c : cases) {
    const auto r = run_tessera(c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

TEST(LogitsCli, WritesEveryPositionLikeTheGoldens) {
  const std::string out = (std::filesystem::temp_directory_path() / "tessera-logits-test.f32").string();
  const auto r = run_tessera("logits -m " + test::fixture("models/tiny-llama-Q8_0.gguf").string() +
                             " -t 1 -p 'The quick brown fox jumps over the lazy dog. Once upon a time, in a small "
                             "village,' --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<float> ours = test::read_f32(out);
  const std::vector<float> golden = test::read_f32(test::fixture("models/tiny-llama-Q8_0.logits.f32"));
  ASSERT_EQ(ours.size(), golden.size());
  EXPECT_LE(test::max_abs_diff(ours.data(), golden.data(), ours.size()).value, 0.05);
  std::filesystem::remove(out);
}

}  // namespace
}  // namespace tessera
