// `tessera tokenize` / `tessera detokenize` as a user runs them.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/run_tessera.h"

namespace {

using Result = tessera::test::CommandResult;

Result run(const std::string& args) { return tessera::test::run_tessera(args); }

std::string stories() { return tessera::test::fixture("trained/stories260K.gguf").string(); }

}  // namespace

TEST(CliTokenize, JsonIsOneArrayOfIds) {
  Result r = run("tokenize --model " + stories() + " --text 'Once upon a time' --json");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(r.out).get<std::vector<int>>(), (std::vector<int>{1, 403, 407, 261, 378}));

  Result no_bos = run("tokenize --model " + stories() + " --text 'Once upon a time' --no-bos --json");
  ASSERT_EQ(no_bos.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(no_bos.out).get<std::vector<int>>(), (std::vector<int>{403, 407, 261, 378}));
}

TEST(CliTokenize, ParseSpecialTurnsTextIntoTheBosToken) {
  Result plain = run("tokenize --model " + stories() + " --text '<s>' --no-bos --json");
  Result parsed = run("tokenize --model " + stories() + " --text '<s>' --no-bos --parse-special --json");
  ASSERT_EQ(plain.exit_code, 0);
  ASSERT_EQ(parsed.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(parsed.out).get<std::vector<int>>(), (std::vector<int>{1}));
  EXPECT_GT(nlohmann::json::parse(plain.out).size(), 1u);
}

TEST(CliTokenize, ListingShowsIdAndPiecePerLine) {
  Result r = run("tokenize --model " + stories() + " --text 'Once upon a time'");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "     1 -> '<s>'\n   403 -> ' Once'\n   407 -> ' upon'\n   261 -> ' a'\n   378 -> ' time'\n");
}

TEST(CliTokenize, DetokenizePrintsTheText) {
  Result r = run("detokenize --model " + stories() + " 403 407 261 378");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "Once upon a time\n");
}

TEST(CliTokenize, BadInputFailsWithTheRightExitCode) {
  EXPECT_EQ(run("tokenize --model " + stories()).exit_code, 2);  // no text
  EXPECT_EQ(run("tokenize --model /nonexistent.gguf --text hi").exit_code, 1);
  EXPECT_EQ(run("tokenize --model " + stories() + " --text-file /nonexistent.txt").exit_code, 1);
  EXPECT_EQ(run("detokenize --model " + stories() + " 99999").exit_code, 1);
  EXPECT_EQ(run("detokenize --model " + stories() + " abc").exit_code, 2);
}
