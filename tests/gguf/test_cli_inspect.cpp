// `tessera inspect` run as a program: the JSON document on a fixture, and exit 1 with one line on a bad file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "common/fixtures.h"

namespace tessera {
namespace {

struct RunResult {
  int exit_code;
  std::string out;
  std::string err;
};

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

RunResult run_tessera(const std::string& args) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path();
  const std::string tag = std::to_string(::getpid());
  const std::filesystem::path out = dir / ("tessera-inspect-out-" + tag);
  const std::filesystem::path err = dir / ("tessera-inspect-err-" + tag);
  const std::string command = test::tessera_binary() + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(command.c_str());
  RunResult r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

TEST(InspectCli, JsonDocumentOfAFixture) {
  const RunResult r = run_tessera("inspect --json " + test::fixture("models/tiny-llama-Q4_K_M.gguf").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["version"], 3);
  EXPECT_EQ(doc["alignment"], 32);
  EXPECT_EQ(doc["metadata"]["general.architecture"], "llama");
  EXPECT_EQ(doc["metadata"]["llama.block_count"], 2);
  EXPECT_EQ(doc["metadata"]["general.file_type"], 15);
  EXPECT_FLOAT_EQ(doc["metadata"]["llama.attention.layer_norm_rms_epsilon"].get<float>(), 1e-5f);
  ASSERT_TRUE(doc["metadata"]["tokenizer.ggml.tokens"].is_array());
  EXPECT_EQ(doc["metadata"]["tokenizer.ggml.tokens"].size(), 512u);  // full, not abbreviated
  EXPECT_EQ(doc["metadata"]["tokenizer.ggml.tokens"][1], "<s>");
  ASSERT_EQ(doc["tensors"].size(), 21u);
  const nlohmann::json& first = doc["tensors"][0];
  EXPECT_EQ(first["name"], "output.weight");
  EXPECT_EQ(first["type"], "Q6_K");
  EXPECT_EQ(first["shape"], nlohmann::json::array({256, 512}));
  EXPECT_EQ(first["offset"], 0);
  EXPECT_EQ(first["bytes"], 107520);
  bool found_embd = false;
  for (const nlohmann::json& t : doc["tensors"]) {
    if (t["name"] != "token_embd.weight") continue;
    found_embd = true;
    EXPECT_EQ(t["type"], "Q4_K");
    EXPECT_EQ(t["offset"], 108544);
    EXPECT_EQ(t["bytes"], 73728);
  }
  EXPECT_TRUE(found_embd);
}

TEST(InspectCli, TextSummary) {
  const RunResult r = run_tessera("inspect " + test::fixture("models/tiny-llama-Q4_K_M.gguf").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("GGUF v3, alignment 32"), std::string::npos);
  EXPECT_NE(r.out.find("file type:  Q4_K - Medium (15)"), std::string::npos);
  EXPECT_NE(r.out.find("parameters: 1836288"), std::string::npos);
  EXPECT_NE(r.out.find("(512 string elements)"), std::string::npos);  // the abbreviated token list
  EXPECT_NE(r.out.find("Q6_K:       3 tensors, 295680 bytes"), std::string::npos);
  EXPECT_NE(r.out.find("block_count"), std::string::npos);
}

TEST(InspectCli, BadFileExitsOneWithOneLine) {
  const std::filesystem::path bad =
      std::filesystem::temp_directory_path() / ("tessera-bad-" + std::to_string(::getpid()) + ".gguf");
  {
    std::ofstream out(bad, std::ios::binary);
    const char bytes[] = {'G', 'G', 'U', 'F', 9, 0, 0, 0};
    out.write(bytes, sizeof bytes);
  }
  const RunResult r = run_tessera("inspect --json " + bad.string());
  std::filesystem::remove(bad);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err, "error: unsupported GGUF version 9 (this reader supports versions 2 and 3)\n");

  const RunResult missing = run_tessera("inspect /nonexistent.gguf");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err.rfind("error: cannot open '/nonexistent.gguf'", 0), 0u) << missing.err;
}

TEST(InspectCli, MissingArgumentIsAUsageError) {
  EXPECT_EQ(run_tessera("inspect").exit_code, 2);
}

}  // namespace
}  // namespace tessera
