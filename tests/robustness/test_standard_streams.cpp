// Class 2 of issue 28: every write to standard output is checked. A full disk (/dev/full), a closed stdout and a
// dead pipe end the command with exit 1 (the reason named, except for a broken pipe) instead of exit 0, and a
// generation into a dead pipe stops.
#include <gtest/gtest.h>

#include "robustness/robustness.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;

std::vector<std::vector<std::string>> commands_that_print() {
  const std::string m = test::stories_model();
  return {
      {"run", "-m", m, "-p", "Once upon a time", "-n", "8", "-t", "1"},
      {"run", "-m", m, "-p", "Once upon a time", "-n", "8", "-t", "1", "--output", "json"},
      {"tokenize", "-m", m, "-p", "Once upon a time"},
      {"tokenize", "-m", m, "-p", "Once upon a time", "--json"},
      {"detokenize", "-m", m, "1", "403", "407"},
      {"inspect", m},
      {"inspect", m, "--json"},
      {"bench", "-m", m, "-p", "8", "-n", "8", "-r", "1", "-t", "1"},
      {"--help"},
  };
}

std::string joined(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) out += (out.empty() ? "" : " ") + a;
  return out;
}

TEST(StandardStreams, AFullDiskAsStdoutFailsEveryCommand) {
  Child::Options to_dev_full;
  to_dev_full.before_exec = [] {
    const int fd = ::open("/dev/full", O_WRONLY);
    dup2(fd, STDOUT_FILENO);
  };
  for (const std::vector<std::string>& args : commands_that_print()) {
    Child child(args, to_dev_full);
    const test::ChildExit r = child.wait(60s);
    EXPECT_EQ(r.code, 1) << joined(args) << ": " << r.err;
    EXPECT_NE(r.err.find("error: cannot write to standard output: No space left on device"), std::string::npos)
        << joined(args) << ": " << r.err;
  }
}

TEST(StandardStreams, AClosedStdoutFailsEveryCommand) {
  Child::Options closed;
  closed.before_exec = [] { ::close(STDOUT_FILENO); };
  for (const std::vector<std::string>& args : commands_that_print()) {
    Child child(args, closed);
    const test::ChildExit r = child.wait(60s);
    EXPECT_EQ(r.code, 1) << joined(args) << ": " << r.err;
    EXPECT_NE(r.err.find("error: cannot write to standard output: Bad file descriptor"), std::string::npos)
        << joined(args) << ": " << r.err;
  }
}

// With a closed stdout, a file the command opens must not become its stdout: logits' output holds only logits.
TEST(StandardStreams, AClosedStdoutIsNotReplacedByAnOutputFile) {
  test::ScratchDir dir;
  Child::Options closed;
  closed.before_exec = [] { ::close(STDOUT_FILENO); };
  Child child({"logits", "-m", test::stories_model(), "-p", "Once upon a time", "-t", "1", "--out", dir / "l.f32"},
              closed);
  const test::ChildExit r = child.wait(60s);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(std::filesystem::file_size(dir / "l.f32"), 5u * 512u * sizeof(float));
}

// The reader goes away after the first words of a generation that would run for minutes; the parent ignored
// SIGPIPE (as the shell did), so only checked writes can stop it. Quietly: the reader left on purpose.
TEST(StandardStreams, ADeadPipeStopsGeneration) {
  for (const bool ignore_sigpipe : {true, false}) {
    Child::Options options;
    if (ignore_sigpipe) options.before_exec = [] { signal(SIGPIPE, SIG_IGN); };
    Child child(test::long_run_args(test::stories_model()), options);
    ASSERT_TRUE(child.wait_for_stdout("there", 30s)) << child.err();
    child.close_stdout();
    const test::ChildExit r = child.wait(30s);
    EXPECT_FALSE(r.timed_out);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_EQ(r.err.find("error:"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("generated:"), std::string::npos) << r.err;
  }
}

TEST(StandardStreams, ADeadPipeStopsInspect) {
  // inspect --json of the fixture is far more than a pipe holds, so writes meet the closed pipe.
  Child child({"inspect", test::stories_model(), "--json"}, {.before_exec = {}, .drain_stdout = false});
  child.close_stdout();
  const test::ChildExit r = child.wait(30s);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
}

}  // namespace
}  // namespace tessera
