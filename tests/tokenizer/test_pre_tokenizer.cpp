// The byte-level BPE pre-tokenizers: every name llama.cpp knows compiles, and the splits of the common
// patterns are the ones their regexes define.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer/impl.h"

using tessera::tokenizer::PreTokenizer;

namespace {

std::vector<std::string> split(const char* name, const std::string& text) {
  PreTokenizer pre(name);
  std::vector<std::pair<size_t, size_t>> pieces;
  pre.split(text, pieces);
  std::vector<std::string> out;
  for (auto [offset, length] : pieces) out.push_back(text.substr(offset, length));
  return out;
}

using Pieces = std::vector<std::string>;

}  // namespace

TEST(PreTokenizer, EveryKnownNameCompilesAndCoversTheText) {
  const std::string text = "Hello, World's 12345 caf\xC3\xA9\n\n  \xE4\xBD\xA0\xE5\xA5\xBD <sentinel:3> IMGIMGABZ";
  for (const char* name :
       {"default", "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "deepseek-llm", "deepseek-coder",
        "deepseek-v3", "falcon", "mpt", "starcoder", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en",
        "jina-v2-es", "jina-v2-de", "jina-v2-code", "roberta-bpe", "refact", "command-r", "qwen2", "deepseek-r1-qwen",
        "stablelm2", "olmo", "poro-chat", "viking", "jais", "tekken", "smollm", "codeshell", "bloom", "gpt3-finnish",
        "exaone", "chameleon", "minerva-7b", "megrez"}) {
    std::string joined;
    for (const std::string& piece : split(name, text)) {
      EXPECT_FALSE(piece.empty()) << name;
      joined += piece;
    }
    EXPECT_EQ(joined, text) << name;  // pieces tile the text: nothing lost, nothing repeated
  }
  EXPECT_THROW(PreTokenizer("llama4-unknown"), std::runtime_error);
}

TEST(PreTokenizer, Gpt2Pattern) {
  EXPECT_EQ(split("gpt-2", "Hello world's 12345!!  x"),
            (Pieces{"Hello", " world", "'s", " 12345", "!!", " ", " x"}));
}

TEST(PreTokenizer, Llama3GroupsDigitsInThreesAndKeepsCaseInsensitiveContractions) {
  EXPECT_EQ(split("llama-bpe", "Hello WORLD'S 12345\n\n x"),
            (Pieces{"Hello", " WORLD", "'S", " ", "123", "45", "\n\n", " x"}));
}

TEST(PreTokenizer, StarcoderSplitsEveryDigit) {
  EXPECT_EQ(split("starcoder", "a 123"), (Pieces{"a", " ", "1", "2", "3"}));
}

TEST(PreTokenizer, DeepseekLlmEndOfPieceDollarIgnoresAFinalNewline) {
  // "\s+$" must not match before a trailing newline (PCRE2's default '$' would); the newline is its own piece.
  EXPECT_EQ(split("deepseek-llm", "ab  \n"), (Pieces{"ab", "  ", "\n"}));
}
