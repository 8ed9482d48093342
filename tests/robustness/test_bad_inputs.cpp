// Classes 5, 6 and 7 of issue 28: inputs that are not what they seem (directories, FIFOs, endless devices),
// messages that must name the cause rather than a symptom, and models whose numbers are nonsense (NaN/Inf
// hyper-parameters or weights, special token ids outside the vocabulary), each written by our GGUF writer from the
// trained fixture with one thing changed.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "robustness/robustness.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;

test::ChildExit run_args(const std::vector<std::string>& args, const Child::Options& options = {}) {
  Child child(args, options);
  return child.wait(60s);
}

void expect_failure(const std::vector<std::string>& args, int code, const std::string& message) {
  const test::ChildExit r = run_args(args);
  EXPECT_TRUE(r.exited) << "signal " << r.signal;
  EXPECT_EQ(r.code, code) << args[0] << " " << args.back() << ": " << r.err;
  EXPECT_NE(r.err.find(message), std::string::npos) << args[0] << " " << args.back() << ": " << r.err;
  EXPECT_EQ(r.err.find("std::"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("basic_filebuf"), std::string::npos) << r.err;
}

std::vector<std::string> run_with(std::vector<std::string> extra, const std::string& model = test::stories_model()) {
  std::vector<std::string> args = {"run", "-m", model, "-n", "3", "-t", "1", "--temp", "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// ---- class 5: inputs that are not files -----------------------------------------------------------------------

TEST(BadInputs, DirectoriesFifosAndDevicesAreRefusedOrBounded) {
  test::ScratchDir dir;
  std::filesystem::create_directory(dir / "folder");
  ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0644), 0);
  const std::string m = test::stories_model();
  expect_failure(run_with({"-f", dir / "folder"}), 1, "prompt file '" + dir / "folder" + "' is a directory");
  expect_failure({"tokenize", "-m", m, "-f", dir / "folder"}, 1, "text file '" + dir / "folder" + "' is a directory");
  expect_failure(run_with({"-f", "/dev/zero"}), 1, "prompt file '/dev/zero' holds more than 64 MiB");
  // Model files are mapped: only a regular file will do, and a FIFO without a writer must not block.
  expect_failure({"inspect", dir / "fifo"}, 1, "is a FIFO, not a regular file");
  expect_failure({"run", "-m", dir / "fifo", "-p", "hi"}, 1, "is a FIFO, not a regular file");
  expect_failure({"tokenize", "-m", dir / "folder", "-p", "hi"}, 1, "is a directory, not a regular file");
  expect_failure({"quantize", dir / "folder", dir / "out.gguf", "Q8_0"}, 1, "is a directory, not a regular file");
  expect_failure({"synth", "--preset", "tiny", "--vocab-from", dir / "fifo", "-o", dir / "out.gguf"}, 1,
                 "is a FIFO, not a regular file");
  EXPECT_EQ(dir.names(), (std::vector<std::string>{"fifo", "folder"}));
}

TEST(BadInputs, APromptFromAFifoOrStandardInputIsRead) {
  test::ScratchDir dir;
  ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0644), 0);
  Child child(run_with({"-f", dir / "fifo"}));
  // The writer waits for the reader to open the FIFO, at most as long as the child may run.
  std::thread writer([&] {
    const std::string text = "Once upon a time";
    for (const auto end = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < end;) {
      const int fd = ::open((dir / "fifo").c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) {
        EXPECT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
        ::close(fd);
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
  });
  const test::ChildExit r = child.wait(60s);
  writer.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was\n");

  test::write_whole_file(dir / "prompt.txt", "Once upon a time");
  const std::string prompt = dir / "prompt.txt";
  Child::Options from_file;
  from_file.before_exec = [&prompt] { dup2(::open(prompt.c_str(), O_RDONLY), STDIN_FILENO); };
  const test::ChildExit tokens = run_args({"tokenize", "-m", test::stories_model(), "-f", "-", "--json"}, from_file);
  EXPECT_EQ(tokens.code, 0) << tokens.err;
  EXPECT_EQ(tokens.out, "[1,403,407,261,378]\n");
}

// ---- class 6: messages that name the cause --------------------------------------------------------------------

TEST(Messages, AHugeContextSaysTheKvCacheSizeAndTheMemory) {
  const test::ChildExit r = run_args(run_with({"-p", "hi", "-c", "1000000000"}));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("a KV cache of 1000000000 tokens needs 596.0 GiB"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("of memory is available"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("bad_alloc"), std::string::npos) << r.err;
}

TEST(Messages, AContextBeyondTheTrainedOneIsAWarning) {
  const test::ChildExit r = run_args(run_with({"-p", "Once upon a time", "-c", "4096"}));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: --ctx-size 4096 is more than the 2048 tokens the model was trained on"),
            std::string::npos)
      << r.err;
  const test::ChildExit within = run_args(run_with({"-p", "Once upon a time", "-c", "2048"}));
  EXPECT_EQ(within.err.find("warning"), std::string::npos) << within.err;
}

TEST(Messages, AnEmptyPromptIsAPrompt) {
  const test::ChildExit r = run_args(run_with({"-p", ""}));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("prompt: 1 tokens"), std::string::npos) << r.err;  // BOS alone
  expect_failure(run_with({"-p", "", "--no-bos"}), 2, "the prompt gives no tokens");
  expect_failure(run_with({}), 2, "give exactly one of --prompt and --file");
}

TEST(Messages, AMistypedCommandSuggestsTheNearestOne) {
  expect_failure({"inspct", test::stories_model()}, 2, "unknown command 'inspct'; did you mean 'inspect'?");
  expect_failure({"tokenise", "-m", test::stories_model()}, 2, "did you mean 'tokenize'?");
  expect_failure({"qantize"}, 2, "did you mean 'quantize'?");
  expect_failure({"frobnicate"}, 2, "unknown command 'frobnicate'; the commands are run, inspect");
}

TEST(Messages, AVocabularyThatDoesNotMatchTheEmbeddingsIsFoundAtLoad) {
  test::ScratchDir dir;
  for (const size_t n_tokens : {500u, 600u}) {
    const std::string path = dir / ("vocab" + std::to_string(n_tokens) + ".gguf");
    test::write_model_copy(path, [&](test::ModelCopy& m) {
      const gguf::File source = gguf::File::open(test::stories_model());
      std::vector<std::string> tokens = *source.get_string_array("tokenizer.ggml.tokens");
      std::vector<float> scores = *source.get_float_array("tokenizer.ggml.scores");
      std::vector<int32_t> types(tokens.size(), 1);
      tokens.resize(n_tokens, "extra");
      scores.resize(n_tokens, 0.0f);
      types.resize(n_tokens, 1);
      for (size_t i = 512; i < n_tokens; ++i) tokens[i] += std::to_string(i);  // unique texts
      m.writer.set("tokenizer.ggml.tokens", tokens);
      m.writer.set("tokenizer.ggml.scores", scores);
      m.writer.set("tokenizer.ggml.token_type", types);
    });
    expect_failure(run_with({"-p", "hi"}, path), 1,
                   "the vocabulary (tokenizer.ggml.tokens) has " + std::to_string(n_tokens) +
                       " tokens but tensor 'token_embd.weight' has 512 rows");
  }
}

TEST(Messages, AWrongEmbeddingLengthIsNamed) {
  test::ScratchDir dir;
  test::write_model_copy(dir / "m.gguf",
                         [](test::ModelCopy& m) { m.writer.set("llama.embedding_length", uint32_t{32}); });
  expect_failure(run_with({"-p", "hi"}, dir / "m.gguf"), 1,
                 "metadata key 'llama.embedding_length' is 32 but the rows of tensor 'token_embd.weight' have 64 "
                 "values");
}

// ---- class 7: silent nonsense ---------------------------------------------------------------------------------

TEST(Nonsense, NonFiniteHyperParametersAreRefusedAtLoad) {
  test::ScratchDir dir;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::pair<std::string, float>> cases = {
      {"llama.attention.layer_norm_rms_epsilon", inf},
      {"llama.attention.layer_norm_rms_epsilon", nan},
      {"llama.rope.freq_base", inf},
      {"llama.rope.freq_base", -1.0f},
  };
  for (const auto& [key, value] : cases) {
    test::write_model_copy(dir / "m.gguf", [&](test::ModelCopy& m) { m.writer.set(key, value); });
    expect_failure(run_with({"-p", "hi"}, dir / "m.gguf"), 1,
                   "metadata key '" + key + "' has value " + fmt::format("{}", static_cast<double>(value)) +
                       "; it must be a positive finite number");
  }
}

TEST(Nonsense, NonFiniteNormWeightsAreRefusedAtLoad) {
  test::ScratchDir dir;
  test::write_model_copy(dir / "m.gguf", [](test::ModelCopy& m) {
    std::vector<uint8_t>& bytes = m.tensor_bytes("blk.2.ffn_norm.weight");
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(bytes.data() + 7 * sizeof(float), &nan, sizeof nan);
  });
  expect_failure(run_with({"-p", "hi"}, dir / "m.gguf"), 1, "tensor 'blk.2.ffn_norm.weight' holds nan at index 7");
}

// NaN in a matrix is not looked for at load (that would read every weight); the logits show it.
TEST(Nonsense, NonFiniteLogitsStopRunAndBench) {
  test::ScratchDir dir;
  test::write_model_copy(dir / "m.gguf", [](test::ModelCopy& m) {
    std::vector<uint8_t>& bytes = m.tensor_bytes("blk.0.attn_output.weight");
    const float inf = std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < bytes.size(); i += sizeof(float)) std::memcpy(bytes.data() + i, &inf, sizeof inf);
  });
  expect_failure(run_with({"-p", "hi"}, dir / "m.gguf"), 1, "the model computed a non-finite logit");
  expect_failure({"bench", "-m", dir / "m.gguf", "-p", "8", "-n", "0", "-r", "1", "-t", "1"}, 1, "non-finite logit");
  expect_failure({"bench", "-m", dir / "m.gguf", "-p", "0", "-n", "4", "-r", "1", "-t", "1"}, 1, "non-finite logit");
}

TEST(Nonsense, SpecialTokenIdsOutsideTheVocabularyAreSaid) {
  test::ScratchDir dir;
  test::write_model_copy(dir / "m.gguf", [](test::ModelCopy& m) {
    m.writer.set("tokenizer.ggml.bos_token_id", uint32_t{70000});
    m.writer.set("tokenizer.ggml.eos_token_id", uint32_t{512});
  });
  const test::ChildExit r = run_args(run_with({"-p", "Once upon a time"}, dir / "m.gguf"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, ", there was\n");  // the defaults (BOS 1, EOS 2) are the fixture's own ids
  EXPECT_NE(r.err.find("warning: tokenizer.ggml.bos_token_id = 70000 is outside the vocabulary of 512 tokens; "
                       "using the default 1"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("warning: tokenizer.ggml.eos_token_id = 512 is outside the vocabulary of 512 tokens; using "
                       "the default 2"),
            std::string::npos)
      << r.err;
  // The fixture's own "none" markers (4294967295 for the separator and padding) are not warned about.
  const test::ChildExit fixture = run_args(run_with({"-p", "Once upon a time"}));
  EXPECT_EQ(fixture.err.find("warning"), std::string::npos) << fixture.err;
  const test::ChildExit tokens = run_args({"tokenize", "-m", dir / "m.gguf", "-p", "hi"});
  EXPECT_NE(tokens.err.find("bos_token_id = 70000"), std::string::npos) << tokens.err;
}

std::vector<int> generated_with_seed(const std::string& seed) {
  const test::ChildExit r = run_args({"run", "-m", test::stories_model(), "-p", "Once upon a time", "-n", "40",
                                      "--temp", "1", "-t", "1", "--output", "json", "--seed", seed});
  EXPECT_EQ(r.code, 0) << seed << ": " << r.err;
  return nlohmann::json::parse(r.out)["generated_tokens"].get<std::vector<int>>();
}

TEST(Nonsense, EverySeedOf64BitsIsItsOwn) {
  // Above 2^63 - 1 seeds were clamped to it: these three gave one text.
  const std::vector<int> top = generated_with_seed("18446744073709551615");
  EXPECT_EQ(top, generated_with_seed("18446744073709551615"));
  EXPECT_NE(top, generated_with_seed("9223372036854775807"));
  EXPECT_NE(top, generated_with_seed("9223372036854775808"));
  for (const char* bad : {"-5", "18446744073709551616", "12abc", "+5"}) {
    expect_failure(run_with({"-p", "hi", "--seed", bad}), 2,
                   "--seed must be an integer from 0 to 18446744073709551615");
  }
}

TEST(Nonsense, GpuLayersWithoutTheHybridBackendIsAUsageError) {
  expect_failure(run_with({"-p", "hi", "--gpu-layers", "3"}), 2, "--gpu-layers applies to --backend hybrid only");
  expect_failure(run_with({"-p", "hi", "--backend", "cpu", "--gpu-layers", "0"}), 2, "--backend hybrid only");
  expect_failure({"bench", "-m", test::stories_model(), "--gpu-layers", "1"}, 2, "--backend hybrid only");
}

}  // namespace
}  // namespace tessera
