// llama.cpp's tokenizer test files (fixtures/vocab) and the golden prompts of the model fixtures, through
// Tokenizer::from_gguf: every case must give exactly llama.cpp's ids.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

using tessera::tokenizer::ModelKind;
using tessera::tokenizer::StreamingDecoder;
using tessera::tokenizer::Tokenizer;
using Ids = std::vector<int32_t>;

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct Case {
  std::string text;
  Ids ids;
};

// FORMAT.md: every case ends with "\n__ggml_vocab_test__\n"; .out has one line of ids per case.
std::vector<Case> read_cases(const std::filesystem::path& gguf) {
  const std::string inp = read_file(gguf.string() + ".inp");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<Case> cases;
  for (size_t pos = 0;;) {
    size_t end = inp.find(separator, pos);
    if (end == std::string::npos) break;
    cases.push_back({inp.substr(pos, end - pos), {}});
    pos = end + separator.size();
  }
  std::istringstream out(read_file(gguf.string() + ".out"));
  std::string line;
  for (Case& c : cases) {
    std::getline(out, line);
    std::istringstream numbers(line);
    for (int32_t id; numbers >> id;) c.ids.push_back(id);
  }
  return cases;
}

Tokenizer load(const std::filesystem::path& path) { return Tokenizer::from_gguf(tessera::gguf::File::open(path.string())); }

std::string ids_text(const Ids& ids) {
  std::string s;
  for (int32_t id : ids) {
    s += ' ';
    s += std::to_string(id);
  }
  return s;
}

class VocabFile : public ::testing::TestWithParam<const char*> {};

}  // namespace

TEST_P(VocabFile, EveryCaseMatchesLlamaCpp) {
  const auto path = tessera::test::fixture(std::string("vocab/ggml-vocab-") + GetParam() + ".gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const Tokenizer tok = load(path);
  const std::vector<Case> cases = read_cases(path);
  ASSERT_EQ(cases.size(), 46u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    // As llama.cpp's test-tokenizer-0: add_special = false, parse_special = false.
    const Ids got = tok.encode(c.text, false, false);
    EXPECT_EQ(got, c.ids) << "case " << i << " '" << c.text << "'\n got:" << ids_text(got)
                          << "\nwant:" << ids_text(c.ids);

    // Round trip. SentencePiece: decode drops the space the encoder put in front, so the text comes back
    // exactly. Byte-level BPE: the pieces' bytes are the text (decode's space clean-up aside). WordPiece
    // normalises (lower case, accents), so it has no round trip.
    if (tok.kind() == ModelKind::SentencePiece) {
      EXPECT_EQ(tok.decode(got), c.text) << "case " << i;
    } else if (tok.kind() == ModelKind::BytePairEncoding) {
      std::string pieces;
      for (int32_t id : got) pieces += tok.token_to_piece(id);
      EXPECT_EQ(pieces, c.text) << "case " << i;
    }

    // Streaming gives the pieces' bytes (with SentencePiece's prefix space), never half a character.
    if (tok.kind() != ModelKind::WordPiece) {
      StreamingDecoder stream(tok);
      std::string streamed;
      for (int32_t id : got) {
        const std::string part = stream.push(id);
        EXPECT_EQ(tessera::tokenizer::complete_utf8_prefix(part), part.size());
        streamed += part;
      }
      EXPECT_EQ(stream.flush(), "");
      const std::string prefix = tok.add_space_prefix() && !c.text.empty() ? " " : "";
      EXPECT_EQ(streamed, prefix + c.text) << "case " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Llama, VocabFile,
                         ::testing::Values("llama-spm", "phi-3", "gpt-2", "mpt", "falcon", "starcoder", "refact",
                                           "deepseek-coder", "deepseek-llm", "bert-bge", "llama-bpe", "qwen2",
                                           "command-r"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

TEST(VocabFiles, TheTenPresentVocabulariesAreThere) {
  // The parameterised test skips absent files; make sure the ones the fixtures README lists are really tested.
  for (const char* name : {"llama-spm", "phi-3", "gpt-2", "mpt", "falcon", "starcoder", "refact", "deepseek-coder",
                           "deepseek-llm", "bert-bge"})
    EXPECT_TRUE(std::filesystem::exists(tessera::test::fixture(std::string("vocab/ggml-vocab-") + name + ".gguf")))
        << name;
}

TEST(TrainedModel, Stories260KOnceUponATime) {
  const Tokenizer tok = load(tessera::test::fixture("trained/stories260K.gguf"));
  EXPECT_EQ(tok.n_vocab(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.eot_id(), -1);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_EQ(tok.encode("Once upon a time", true, false), (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok.decode(Ids{403, 407, 261, 378}), "Once upon a time");
  EXPECT_EQ(tok.token_to_piece(13), "\n");  // <0x0A>
}

TEST(TrainedModel, GoldenPromptsOfTheModelFixtures) {
  for (const char* name : {"models/tiny-llama-F32", "models/tiny-llama-v32k-Q4_K_M", "trained/stories260K"}) {
    const auto golden = nlohmann::json::parse(read_file(tessera::test::fixture(std::string(name) + ".golden.json")));
    const Tokenizer tok = load(tessera::test::fixture(std::string(name) + ".gguf"));
    const Ids want = golden.at("prompt_tokens").get<Ids>();
    EXPECT_EQ(tok.encode(golden.at("prompt").get<std::string>(), golden.at("add_special").get<bool>(),
                         golden.at("parse_special").get<bool>()),
              want)
        << name;
    EXPECT_EQ(want.size(), std::string(name).find("v32k") != std::string::npos ? 23u
                           : std::string(name).find("stories") != std::string::npos ? 5u
                                                                                    : 48u);
  }
}

TEST(TrainedModel, StreamingSplitsNoCharacterAcrossByteTokens) {
  // The Llama-2 vocabulary has no token for U+1F999, so it is four byte tokens.
  const Tokenizer tok = load(tessera::test::fixture("vocab/ggml-vocab-llama-spm.gguf"));
  const Ids ids = tok.encode("\xF0\x9F\xA6\x99!", false, false);
  StreamingDecoder stream(tok);
  std::vector<std::string> parts;
  for (int32_t id : ids) parts.push_back(stream.push(id));
  ASSERT_GE(parts.size(), 5u);
  std::string joined;
  for (const std::string& p : parts) joined += p;
  EXPECT_EQ(joined + stream.flush(), " \xF0\x9F\xA6\x99!");
  // Some push returned "" while the character's bytes were arriving.
  EXPECT_NE(std::find(parts.begin(), parts.end(), std::string()), parts.end());
}

TEST(FromGguf, UnsupportedTokenizerModelIsNamed) {
  tessera::gguf::Writer writer;
  writer.set("general.architecture", "llama");
  writer.set("tokenizer.ggml.model", "t5");
  writer.set("tokenizer.ggml.tokens", std::vector<std::string>{"a"});
  const std::vector<uint8_t> bytes = writer.to_bytes();
  const auto file = tessera::gguf::File::parse(bytes);
  try {
    Tokenizer::from_gguf(file);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "tokenizer model 't5' not supported");
  }
}
