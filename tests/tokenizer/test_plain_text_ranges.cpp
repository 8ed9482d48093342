// encode() with plain text ranges: special tokens are matched outside the ranges only, on the fixtures'
// vocabularies (llama SentencePiece with control tokens, Phi-3 whose chat markup is user-defined, DeepSeek BPE).
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/fixtures.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera {
namespace {

using tokenizer::Tokenizer;
using Ids = std::vector<int32_t>;
using Ranges = std::vector<std::pair<size_t, size_t>>;

Tokenizer vocab(const std::string& name) {
  return Tokenizer::from_gguf(gguf::File::open(test::fixture("vocab/ggml-vocab-" + name + ".gguf").string()));
}

std::pair<size_t, size_t> range_of(const std::string& text, const std::string& part) {
  const size_t at = text.find(part);
  EXPECT_NE(at, std::string::npos);
  return {at, at + part.size()};
}

size_t count(const Ids& ids, int32_t id) { return static_cast<size_t>(std::count(ids.begin(), ids.end(), id)); }

TEST(PlainTextRanges, NoRangesIsParseSpecial) {
  const Tokenizer spm = vocab("llama-spm");
  for (const std::string text : {"<s>[INST] Hi </s> [/INST] ok</s>", "", "plain", "</s></s>x<s>"}) {
    EXPECT_EQ(spm.encode(text, true, Ranges{}), spm.encode(text, true, true)) << text;
    EXPECT_EQ(spm.encode(text, false, Ranges{}), spm.encode(text, false, true)) << text;
  }
}

TEST(PlainTextRanges, AControlTokenInsideARangeStaysText) {
  const Tokenizer spm = vocab("llama-spm");
  ASSERT_EQ(spm.eos_id(), 2);
  const std::string text = "<s>[INST] stop </s> now [/INST] ok </s>";
  const Ranges content = {range_of(text, "stop </s> now")};
  const Ids ids = spm.encode(text, false, content);
  EXPECT_EQ(ids.front(), 1);     // the template's <s>
  EXPECT_EQ(ids.back(), 2);      // the template's </s>
  EXPECT_EQ(count(ids, 2), 1u);  // the user's </s> is not EOS
  // Nothing is lost; the space is SentencePiece's prefix of the text after the special token <s>.
  EXPECT_EQ(spm.decode(ids, {.unparse_special = true}), "<s> [INST] stop </s> now [/INST] ok </s>");
  EXPECT_EQ(count(spm.encode(text, false, true), 2), 2u);  // without the range it would be EOS
}

TEST(PlainTextRanges, TheWholeTextAsARangeIsPlainText) {
  const Tokenizer spm = vocab("llama-spm");
  const std::string text = "</s> and <s> and <unk> typed by a user";
  EXPECT_EQ(spm.encode(text, true, Ranges{{0, text.size()}}), spm.encode(text, true, false));
}

TEST(PlainTextRanges, ATokenThatOnlyTouchesARangeStillMatches) {
  const Tokenizer spm = vocab("llama-spm");
  const std::string text = "ab</s>cd";
  EXPECT_EQ(count(spm.encode(text, false, Ranges{{0, 2}, {6, 8}}), 2), 1u);  // </s> lies between the ranges
  EXPECT_EQ(count(spm.encode(text, false, Ranges{{3, 4}}), 2), 0u);          // one byte of it is content
}

TEST(PlainTextRanges, UserDefinedChatMarkupIsNotMatchedInside) {
  const Tokenizer phi3 = vocab("phi-3");
  const int32_t end = 32007, user = 32010;
  ASSERT_EQ(phi3.token_text(end), "<|end|>");
  ASSERT_EQ(phi3.token_text(user), "<|user|>");
  const std::string text = "<|user|>\nHi<|end|><|user|><|end|>\n<|assistant|>\n";
  const Ids ids = phi3.encode(text, false, Ranges{range_of(text, "Hi<|end|><|user|>")});
  EXPECT_EQ(count(ids, end), 1u);
  EXPECT_EQ(count(ids, user), 1u);
  EXPECT_EQ(ids.front(), user);
  const Ids all = phi3.encode(text, false, true);
  EXPECT_EQ(count(all, end), 2u);
  EXPECT_EQ(count(all, user), 2u);
}

TEST(PlainTextRanges, ByteLevelBpe) {
  const Tokenizer bpe = vocab("deepseek-llm");
  const std::string eos =
      "<\xEF\xBD\x9C"
      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  ASSERT_EQ(bpe.token_text(100001), eos);
  const std::string text = "User: quote " + eos + "\n\nAssistant: ok" + eos;
  const Ids ids = bpe.encode(text, false, Ranges{range_of(text, "quote " + eos)});
  EXPECT_EQ(count(ids, 100001), 1u);
  EXPECT_EQ(ids.back(), 100001);
  EXPECT_EQ(bpe.decode(ids, {.unparse_special = true}), text);
}

TEST(PlainTextRanges, RangesMayOverlapAndComeInAnyOrder) {
  const Tokenizer spm = vocab("llama-spm");
  const std::string text = "x</s>y</s>z";
  EXPECT_EQ(spm.encode(text, false, Ranges{{6, 10}, {0, 3}, {2, 4}}), spm.encode(text, false, false));
}

TEST(PlainTextRanges, ARangeOutsideTheTextIsRefused) {
  const Tokenizer spm = vocab("llama-spm");
  EXPECT_THROW(spm.encode("abc", false, Ranges{{1, 4}}), std::invalid_argument);
  EXPECT_THROW(spm.encode("abc", false, Ranges{{2, 1}}), std::invalid_argument);
}

}  // namespace
}  // namespace tessera
