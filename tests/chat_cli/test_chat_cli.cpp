// `tessera chat` through the binary: scripted (stdin not a terminal) on stories260K with a chat template written
// into its metadata, checking the exact prompt tokens of every turn against `tessera template` + `tessera tokenize`,
// the prefix cache between turns, the commands, context overflow, end of generation and a Ctrl-C during a blocked
// write; and on a real terminal under tmux, with Ctrl-C during a reply and at the prompt.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "common/fixtures.h"
#include "common/run_tessera.h"
#include "gguf/gguf.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using test::run_tessera;

// A zephyr-like template that writes no BOS (the tokenizer adds it).
const char* const kTemplate =
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

class ChatCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tessera-chat-test-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // stories260K with `edit` applied to its metadata (a chat template, another EOS id).
  std::string model_with(const std::function<void(gguf::Writer&)>& edit, const std::string& name) {
    const gguf::File in = gguf::File::open(test::fixture("trained/stories260K.gguf").string());
    gguf::Writer out(static_cast<uint32_t>(in.alignment()));
    for (const auto& [key, value] : in.metadata()) out.set(key, value);
    edit(out);
    for (const gguf::TensorInfo& t : in.tensors()) {
      out.add_tensor(t.name, t.type, t.shape, std::span<const uint8_t>(t.data, t.n_bytes));
    }
    const std::string path = (dir_ / name).string();
    out.write(path);
    return path;
  }
  std::string templated_model() {
    return model_with([](gguf::Writer& w) { w.set("tokenizer.chat_template", std::string(kTemplate)); }, "chat.gguf");
  }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

  // The prompt ids of every turn, from --verbose-prompt's lines, with how many came from the cache.
  struct Turn {
    std::vector<int32_t> ids;
    int cached = 0;
  };
  static std::vector<Turn> turns(const std::string& err) {
    std::vector<Turn> out;
    const std::regex line(R"(prompt: (\d+) tokens, (\d+) from the cache, \d+ evaluated: \[([0-9, ]*)\])");
    for (auto it = std::sregex_iterator(err.begin(), err.end(), line); it != std::sregex_iterator(); ++it) {
      Turn t;
      t.cached = std::stoi((*it)[2]);
      for (const nlohmann::json& id : nlohmann::json::parse("[" + (*it)[3].str() + "]")) t.ids.push_back(id.get<int32_t>());
      out.push_back(std::move(t));
    }
    return out;
  }

  // What `tessera template` then `tessera tokenize` make of a conversation: the tokens a turn must feed.
  std::vector<int32_t> expected_tokens(const std::string& model, const nlohmann::json& conversation) {
    const std::string conv = write("expected.json", conversation.dump());
    const auto rendered = run_tessera("template -m " + model + " --messages " + conv);
    EXPECT_EQ(rendered.exit_code, 0) << rendered.err;
    const std::string text = write("expected.txt", rendered.out);
    const auto tokens = run_tessera("tokenize -m " + model + " -f " + text + " --parse-special --json");
    EXPECT_EQ(tokens.exit_code, 0) << tokens.err;
    return nlohmann::json::parse(tokens.out).get<std::vector<int32_t>>();
  }

  nlohmann::json read_json(const std::string& name) {
    std::ifstream in(dir_ / name);
    return nlohmann::json::parse(in);
  }

  fs::path dir_;
};

nlohmann::json first(const nlohmann::json& messages, size_t n) {
  return nlohmann::json(std::vector<nlohmann::json>(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(n)));
}

TEST_F(ChatCli, EveryTurnFeedsTheRenderedConversationAndOnlyNewTokens) {
  const std::string model = templated_model();
  const std::string script = write("script.txt",
                                   "Once upon a time\n"
                                   "The cat sat\n"
                                   "/save " + (dir_ / "a.json").string() + "\n"
                                   "/clear\n"
                                   "A dog\n"
                                   "/set max_tokens 3\n"
                                   "Hello\n"
                                   "/stats\n"
                                   "/save " + (dir_ / "b.json").string() + "\n"
                                   "/load " + (dir_ / "a.json").string() + "\n"
                                   "Then\n"
                                   "/save " + (dir_ / "c.json").string() + "\n");
  const auto r = run_tessera("chat -m " + model + " --temp 0 -n 12 -t 1 --verbose-prompt < " + script);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<Turn> t = turns(r.err);
  ASSERT_EQ(t.size(), 5u) << r.err;
  const nlohmann::json a = read_json("a.json"), b = read_json("b.json"), c = read_json("c.json");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  ASSERT_EQ(c.size(), 6u);
  EXPECT_EQ(a[0]["content"], "Once upon a time");
  EXPECT_EQ(a[1]["role"], "assistant");
  EXPECT_EQ(b[0]["content"], "A dog");  // /clear started over
  EXPECT_EQ(c[4]["content"], "Then");   // /load brought back a.json's four messages

  EXPECT_EQ(t[0].ids, expected_tokens(model, first(a, 1)));
  EXPECT_EQ(t[1].ids, expected_tokens(model, first(a, 3)));
  EXPECT_EQ(t[2].ids, expected_tokens(model, first(b, 1)));
  EXPECT_EQ(t[3].ids, expected_tokens(model, first(b, 3)));
  EXPECT_EQ(t[4].ids, expected_tokens(model, first(c, 5)));

  // Only new tokens are evaluated: a turn finds the previous turns' prompts in the cache (all but the last token
  // of a fully cached prompt, whose logits are needed), also after /clear and /load.
  EXPECT_EQ(t[0].cached, 0);
  EXPECT_GE(t[1].cached, static_cast<int>(t[0].ids.size()) - 1);
  EXPECT_GE(t[3].cached, static_cast<int>(t[2].ids.size()) - 1);
  EXPECT_GE(t[4].cached, static_cast<int>(t[1].ids.size()) - 1);
  // /set max_tokens 3 held the reply to "Hello" to three tokens.
  EXPECT_NE(r.out.find("3 tokens generated"), std::string::npos) << r.out;
}

TEST_F(ChatCli, OldTurnsLeaveAFullContextAndTheChatGoesOn) {
  const std::string model = templated_model();
  std::string lines;
  for (int i = 0; i < 8; ++i) lines += "Once upon a time there was a little dog\n";
  const auto r = run_tessera("chat -m " + model + " --temp 0 -n 16 -c 96 -t 1 --verbose-prompt < " +
                             write("script.txt", lines + "/save " + (dir_ / "end.json").string() + "\n"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("the context is full"), std::string::npos) << r.err;
  const std::vector<Turn> t = turns(r.err);
  ASSERT_EQ(t.size(), 8u) << r.err;
  for (const Turn& turn : t) EXPECT_LE(turn.ids.size() + 16, 96u);
  EXPECT_LT(read_json("end.json").size(), 16u);  // the oldest turns are gone
}

TEST_F(ChatCli, AReplyStopsAtTheEndOfGenerationWhichIsNeverPrinted) {
  // With "." as the EOS token, greedy "Once upon a time" ends at ", there was a little girl named Lily".
  const auto dot = run_tessera("tokenize -m " + test::fixture("trained/stories260K.gguf").string() +
                               " --text . --no-bos --json");
  ASSERT_EQ(dot.exit_code, 0) << dot.err;
  const int32_t dot_id = nlohmann::json::parse(dot.out).back().get<int32_t>();  // after the space prefix
  const std::string model = model_with(
      [&](gguf::Writer& w) { w.set("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(dot_id)); }, "dot.gguf");
  const auto r = run_tessera("chat -m " + model + " --temp 0 -n 50 -t 1 < " +
                             write("script.txt", "Once upon a time\n/stats\n"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string reply = r.out.substr(0, r.out.find('\n'));
  EXPECT_EQ(reply, ", there was a little girl named Lily");
  EXPECT_NE(r.out.find("10 tokens generated"), std::string::npos) << r.out;  // the "." ended it, unprinted
  EXPECT_NE(r.err.find("no chat template"), std::string::npos) << r.err;  // plain text, said once
}

TEST_F(ChatCli, CommandsAnswerAndBadOnesSayHow) {
  const auto r = run_tessera("chat -m " + templated_model() + " -t 1 < " +
                             write("script.txt", "/help\n/config\n/template\n/set temp 0.25\n/set temp warm\n"
                                                 "/set colour red\n/nonsense\n/load " +
                                                     (dir_ / "missing.json").string() + "\n/exit\nnever read\n"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("/save FILE"), std::string::npos);
  EXPECT_NE(r.out.find("chat template: the model's"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("<|assistant|>"), std::string::npos);  // /template shows the source
  EXPECT_NE(r.out.find("(temp = 0.25)"), std::string::npos);
  EXPECT_NE(r.err.find("'warm' is not a value for temp"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown setting 'colour'"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("unknown command '/nonsense'"), std::string::npos);
  EXPECT_NE(r.err.find("missing.json"), std::string::npos) << r.err;
}

// RusTorch's command line opens a chat; without a template the reply is what `run` writes for the same text.
TEST_F(ChatCli, TheSeedsCommandLineWithoutAPromptOpensAChat) {
  const std::string stories = test::fixture("trained/stories260K.gguf").string();
  const auto r = run_tessera("--model " + stories + " --backend hybrid-f32 --max-tokens 10 --temp 0 -t 1 < " +
                             write("script.txt", "Once upon a time\n"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto run = run_tessera("run -m " + stories + " -p 'Once upon a time' -n 10 --temp 0 -t 1");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(r.out, run.out);
  EXPECT_EQ(r.out, ", there was a little girl named Lily\n");  // the golden greedy tokens
}

// A full disk or a dead pipe on stdout ends the chat with one line, as it ends run (issue 28's rules).
TEST_F(ChatCli, AFailedWriteEndsTheChatWithTheReason) {
  const std::string err = (dir_ / "err").string();
  const int status = std::system((test::tessera_binary() + " chat -m " + test::fixture("trained/stories260K.gguf").string() +
                                  " -n 50 --temp 0 -t 1 < " + write("script.txt", "Once upon a time\nThe end\n") +
                                  " > /dev/full 2> " + err)
                                     .c_str());
  std::ifstream in(err);
  const std::string message(std::istreambuf_iterator<char>(in), {});
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << message;
  EXPECT_NE(message.find("No space left on device"), std::string::npos) << message;
}

// A Ctrl-C that comes while a write waits on a full pipe (or a slow terminal) must not fail that write: the reply
// stops at its next token with all it wrote intact, and the chat goes on (here to the end of its script).
TEST_F(ChatCli, CtrlCDuringABlockedWriteStopsTheReplyAndLosesNothing) {
  const std::string model = test::fixture("trained/stories260K.gguf").string();
  const std::string script = write("script.txt", "Once upon a time\n");
  const std::vector<std::string> args = {"chat", "-m", model, "--temp", "0", "-t", "1", "-c", "256", "--context-shift"};
  std::string command;
  for (const std::string& a : args) command += a + " ";
  const auto whole = run_tessera(command + "-n 3000 < " + script);
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  test::Child::Options options;
  options.drain_stdout = false;
  options.before_exec = [path = script.c_str()] {
    dup2(::open(path, O_RDONLY), STDIN_FILENO);
    fcntl(STDOUT_FILENO, F_SETPIPE_SZ, 4096);
  };
  test::Child child(args, options);  // no -n: the reply runs until Ctrl-C stops it
  ASSERT_TRUE(child.wait_until_stdout_blocked(std::chrono::seconds(30))) << child.err();
  child.send(SIGINT);
  child.start_draining_stdout();
  const test::ChildExit r = child.wait(std::chrono::seconds(30));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("cannot write"), std::string::npos) << r.err;
  std::string reply = r.out;
  ASSERT_GE(reply.size(), 4000u);
  ASSERT_EQ(reply.back(), '\n');  // the stopped reply's end of line
  reply.pop_back();
  ASSERT_LT(reply.size(), whole.out.size());
  EXPECT_EQ(whole.out.substr(0, reply.size()), reply);
}

// ---- on a terminal ---------------------------------------------------------------------------------------------

// The chat's prompt, "> ", at the start of a line (tmux trims the trailing space).
const char* const kPrompt = "\n>";

class ChatTerminal : public ChatCli {
 protected:
  void SetUp() override {
    ChatCli::SetUp();
    if (std::system("command -v tmux > /dev/null 2>&1") != 0) GTEST_SKIP() << "tmux is not installed";
    session_ = "tessera-chat-" + std::to_string(::getpid());
  }
  void TearDown() override {
    if (!session_.empty()) std::system(("tmux kill-session -t " + session_ + " 2> /dev/null").c_str());
    ChatCli::TearDown();
  }
  void start(const std::string& args) {
    rc_file_ = (dir_ / "rc").string();
    // \$? reaches tmux's shell unexpanded: the chat's own exit code.
    const std::string command = test::tessera_binary() + " chat " + args + "; echo \\$? > " + rc_file_ + "; sleep 60";
    const std::string tmux = "tmux new-session -d -s " + session_ + " -x 160 -y 50 \"" + command + "\"";
    ASSERT_EQ(std::system(tmux.c_str()), 0);
  }
  void keys(const std::string& keys) {
    ASSERT_EQ(std::system(("tmux send-keys -t " + session_ + " " + keys).c_str()), 0);
  }
  std::string screen() {
    const std::string file = (dir_ / "screen").string();
    std::system(("tmux capture-pane -t " + session_ + " -p -S -200 > " + file).c_str());
    std::ifstream in(file);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // Waits (at most 20 s) until the screen shows `text` `count` times.
  bool wait_for(const std::string& text, int count = 1) {
    for (int i = 0; i < 400; ++i) {
      const std::string s = screen();
      int seen = 0;
      for (size_t at = s.find(text); at != std::string::npos; at = s.find(text, at + 1)) ++seen;
      if (seen >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // The chat's exit code, once it has ended (at most 20 s); -1 if it has not.
  int exit_code() {
    for (int i = 0; i < 400; ++i) {
      std::ifstream in(rc_file_);
      int rc = -1;
      if (in >> rc) return rc;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  std::string session_, rc_file_;
};

TEST_F(ChatTerminal, CtrlCStopsAReplyAndTheChatGoesOn) {
  // Without -n and with --context-shift the reply runs until Ctrl-C stops it, however slow the host is.
  start("-m " + test::fixture("trained/stories260K.gguf").string() + " --temp 0 -t 1 -c 256 --context-shift -n 0");
  ASSERT_TRUE(wait_for(kPrompt)) << screen();
  keys("'Once upon a time' Enter");
  ASSERT_TRUE(wait_for("there was a little girl")) << screen();
  keys("C-c");
  ASSERT_TRUE(wait_for("(stopped)")) << screen();
  ASSERT_TRUE(wait_for(kPrompt, 2)) << screen();
  keys("'/stats' Enter");
  ASSERT_TRUE(wait_for("last reply: prompt 5 tokens")) << screen();
  keys("'/exit' Enter");
  EXPECT_EQ(exit_code(), 0) << screen();
}

TEST_F(ChatTerminal, CtrlCClearsTheLineAndTwiceLeaves) {
  start("-m " + templated_model() + " --temp 0 -t 1 -n 4");
  ASSERT_TRUE(wait_for(kPrompt)) << screen();
  keys("'half a line' C-c");
  ASSERT_TRUE(wait_for("Ctrl-C again")) << screen();
  keys("'Once upon a time' Enter");
  ASSERT_TRUE(wait_for(kPrompt, 3)) << screen();  // the cleared line sent nothing; the message got its reply
  keys("C-c");
  keys("C-c");
  EXPECT_EQ(exit_code(), 130) << screen();
}

TEST_F(ChatTerminal, MultiLineMessagesAndCtrlDLeave) {
  start("-m " + templated_model() + " --temp 0 -t 1 -n 4 --verbose-prompt 2> " + (dir_ / "err").string());
  ASSERT_TRUE(wait_for(kPrompt)) << screen();
  keys("'\"\"\"' Enter 'first line' Enter 'second line' Enter '\"\"\"' Enter");
  ASSERT_TRUE(wait_for(kPrompt, 2)) << screen();
  keys("C-d");
  EXPECT_EQ(exit_code(), 0) << screen();
  std::ifstream in(dir_ / "err");
  const std::string err(std::istreambuf_iterator<char>(in), {});
  const std::vector<Turn> t = turns(err);
  ASSERT_EQ(t.size(), 1u) << err;
  const nlohmann::json conversation = {{{"role", "user"}, {"content", "first line\nsecond line"}}};
  EXPECT_EQ(t[0].ids, expected_tokens((dir_ / "chat.gguf").string(), conversation));
}

}  // namespace
}  // namespace tessera
