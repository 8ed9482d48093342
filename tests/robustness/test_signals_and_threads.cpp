// Classes 3, 4 and 8 of issue 28: threads that cannot be started end the command with one line (no abort);
// Ctrl-C stops a generation at the current token and reports it (text and stats, or the JSON document), a second
// Ctrl-C quits at once; a model file truncated while mapped is named instead of dying of SIGBUS.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "robustness/robustness.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;

// ---- class 3: threads -----------------------------------------------------------------------------------------

TEST(Threads, AHugeThreadCountIsCappedWithAWarning) {
  Child child(
      {"run", "-m", test::stories_model(), "-p", "Once upon a time", "-n", "3", "--temp", "0", "-t", "1000000"});
  const test::ChildExit r = child.wait(60s);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was\n");
  const unsigned cap = 4 * std::max(1u, std::thread::hardware_concurrency());
  EXPECT_NE(r.err.find("warning: --threads 1000000 is more than 4 x the"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("using " + std::to_string(cap)), std::string::npos) << r.err;
}

// Each thread's stack is reserved from the address space; with a large stack size and a small address space only a
// few threads fit. That limit binds root too, unlike the process count.
void limit_threads_by_address_space() {
  const rlimit stack{size_t{1} << 30, size_t{1} << 30};
  setrlimit(RLIMIT_STACK, &stack);
  const rlimit address_space{size_t{3} << 30, size_t{3} << 30};
  setrlimit(RLIMIT_AS, &address_space);
}

void limit_process_count() {
  const rlimit one{1, 1};
  setrlimit(RLIMIT_NPROC, &one);
}

std::vector<std::vector<std::string>> commands_with_threads() {
  const std::string m = test::stories_model();
  return {
      {"run", "-m", m, "-p", "Once upon a time", "-n", "3", "-t", "8"},
      {"logits", "-m", m, "-p", "Once upon a time", "-t", "8", "--out", "/nonexistent-folder/never-written"},
      {"bench", "-m", m, "-p", "8", "-n", "8", "-r", "1", "-t", "8"},
      {"bench", "--membw", "--membw-mib", "64", "-t", "8"},
      {"quantize", m, "/nonexistent-folder/never-written", "Q8_0", "--threads", "8"},
  };
}

void expect_one_line_naming_the_thread(const std::function<void()>& limit) {
  for (std::vector<std::string> args : commands_with_threads()) {
    test::ScratchDir dir;
    // The outputs go to the scratch folder, so that the commands get as far as starting threads.
    for (std::string& a : args) {
      if (a == "/nonexistent-folder/never-written") a = dir / "out";
    }
    Child child(args, {.before_exec = limit, .drain_stdout = true});
    const test::ChildExit r = child.wait(60s);
    EXPECT_TRUE(r.exited) << args[0] << " died of signal " << r.signal << ": " << r.err;
    EXPECT_EQ(r.code, 1) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("cannot start thread"), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_EQ(dir.names(), std::vector<std::string>{}) << args[0];
  }
}

TEST(Threads, ThreadsThatCannotStartGiveOneLineWhenMemoryRunsOut) {
  expect_one_line_naming_the_thread(limit_threads_by_address_space);
}

TEST(Threads, ThreadsThatCannotStartGiveOneLineUnderALowProcessLimit) {
  if (geteuid() == 0) GTEST_SKIP() << "the process limit does not bind root";
  expect_one_line_naming_the_thread(limit_process_count);
}

// ---- class 4: Ctrl-C ------------------------------------------------------------------------------------------

TEST(Interrupt, CtrlCStopsTextGenerationAndPrintsTheStats) {
  Child child(test::long_run_args(test::stories_model()));
  ASSERT_TRUE(child.wait_for_stdout("there", 30s)) << child.err();
  child.send(SIGINT);
  const test::ChildExit r = child.wait(30s);
  EXPECT_EQ(r.code, 130) << r.err;
  // The greedy text (the fixture's golden tokens) up to where it stopped, and the newline a normal end prints.
  const std::string golden = ", there was a little girl named Lily. She";
  ASSERT_GE(r.out.size(), std::string(", there\n").size());
  EXPECT_EQ(r.out.back(), '\n');
  const std::string text = r.out.substr(0, r.out.size() - 1);
  EXPECT_TRUE(golden.starts_with(text) || text.starts_with(golden)) << text.substr(0, 100);
  EXPECT_NE(r.err.find("stop: interrupted"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated: "), std::string::npos) << r.err;
}

TEST(Interrupt, CtrlCStillGivesTheJsonDocument) {
  Child child(test::long_run_args(test::stories_model(), {"--output", "json"}));
  // The warning about the context longer than the model's comes once the model is loaded.
  ASSERT_TRUE(child.wait_for_stderr("tokens the model was trained on", 30s)) << child.err();
  std::this_thread::sleep_for(200ms);
  child.send(SIGINT);
  const test::ChildExit r = child.wait(30s);
  EXPECT_EQ(r.code, 130) << r.err;
  const nlohmann::json doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["stop_reason"], "interrupted");
  const auto tokens = doc["generated_tokens"].get<std::vector<int>>();
  EXPECT_LT(tokens.size(), 100000u);
  EXPECT_EQ(doc["timings"]["generated_tokens"], tokens.size());
  if (tokens.size() >= 4) {
    EXPECT_EQ(std::vector<int>(tokens.begin(), tokens.begin() + 4), (std::vector<int>{432, 383, 286, 261}));
  }
}

// The first Ctrl-C cannot stop a generation whose write is blocked on a full pipe; the second quits at once.
TEST(Interrupt, ASecondCtrlCQuitsAtOnce) {
  Child::Options options;
  options.drain_stdout = false;
  options.before_exec = [] { fcntl(STDOUT_FILENO, F_SETPIPE_SZ, 4096); };
  Child child(test::long_run_args(test::stories_model()), options);
  ASSERT_TRUE(child.wait_until_stdout_blocked(30s)) << child.err();
  child.send(SIGINT);
  EXPECT_FALSE(child.ends_within(500ms)) << child.err();
  EXPECT_TRUE(child.wait_for_stderr("interrupted", 5s)) << child.err();
  child.send(SIGINT);
  EXPECT_TRUE(child.ends_within(5s));
  const test::ChildExit r = child.wait(5s);
  EXPECT_EQ(r.code, 130) << r.err;
  EXPECT_EQ(r.err.find("stop: interrupted"), std::string::npos) << r.err;  // quit without the report
}

TEST(Interrupt, SigtermEndsAGenerationWith143) {
  Child child(test::long_run_args(test::stories_model()));
  ASSERT_TRUE(child.wait_for_stdout("there", 30s)) << child.err();
  child.send(SIGTERM);
  const test::ChildExit r = child.wait(30s);
  EXPECT_EQ(r.code, 143) << r.err;
}

// ---- class 8: the model file changes under the mapping ---------------------------------------------------------

TEST(ModelFileTruncated, SigbusIsNamedInOneLine) {
  test::ScratchDir dir;
  const std::string copy = dir / "model.gguf";
  std::filesystem::copy_file(test::stories_model(), copy);
  std::filesystem::permissions(copy, std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  Child child(test::long_run_args(copy));
  ASSERT_TRUE(child.wait_for_stdout("there", 30s)) << child.err();
  std::filesystem::resize_file(copy, 0);
  const test::ChildExit r = child.wait(30s);
  EXPECT_TRUE(r.exited) << "signal " << r.signal;
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("error: the model file changed or was truncated while in use"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tessera
