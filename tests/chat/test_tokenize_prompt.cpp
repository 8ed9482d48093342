// A rendered prompt tokenized with its content ranges: the template's markup becomes special tokens, what the
// user typed stays text (the llama SentencePiece vocabulary of the fixtures: <s> = 1, </s> = 2).
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "chat/chat_template.h"
#include "common/fixtures.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera {
namespace {

TEST(TokenizePrompt, UserTypedEosStaysTextTemplateEosIsSpecial) {
  const auto tok =
      tokenizer::Tokenizer::from_gguf(gguf::File::open(test::fixture("vocab/ggml-vocab-llama-spm.gguf").string()));
  const std::vector<chat::Message> messages = {{"user", "say </s> please"}, {"assistant", "</s>"}, {"user", "<s>?"}};
  chat::RenderOptions options;
  options.bos_token = tok.token_text(tok.bos_id());
  options.eos_token = tok.token_text(tok.eos_id());
  const chat::RenderedPrompt p = chat::ChatTemplate::builtin("llama2").render(messages, options);
  ASSERT_EQ(p.text, "<s>[INST] say </s> please [/INST] </s> </s><s>[INST] <s>? [/INST]");

  const std::vector<int32_t> ids = tok.encode(p.text, false, p.content_ranges);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);  // the template's EOS after the reply
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);  // the template's two BOS
  const std::vector<int32_t> unsafe = tok.encode(p.text, false, true);
  EXPECT_EQ(std::count(unsafe.begin(), unsafe.end(), 2), 3);  // what parsing special tokens everywhere gives
  EXPECT_EQ(std::count(unsafe.begin(), unsafe.end(), 1), 3);
}

}  // namespace
}  // namespace tessera
