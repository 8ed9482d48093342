// Turning a conversation into prompt tokens, for `chat` and `serve`: the model's chat template (or the one named
// by --chat-template / --chat-template-file, chat_template_options.h) rendered with the vocabulary's BOS and EOS texts, then tokenized so
// that only the template's own markup becomes special tokens (chat/chat_template.h). A model without a template
// chats in plain text: the messages' texts joined by a separator, which the model continues.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "cli/chat_template_options.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

class ChatPrompt {
 public:
  // Without a template, messages are joined by `plain_separator`.
  ChatPrompt(std::optional<chat::ChatTemplate> chat_template, tokenizer::Tokenizer tokenizer,
             std::string plain_separator);

  bool has_template() const { return chat_template_.has_value(); }
  // The template's Jinja source ("" without one).
  std::string template_source() const { return chat_template_ ? chat_template_->source() : std::string(); }

  // The prompt text and the byte ranges that came from the messages. Throws chat::TemplateError or
  // chat::TemplateRaised (both std::runtime_error) when the template cannot render the conversation.
  chat::RenderedPrompt render(std::span<const chat::Message> messages, bool add_generation_prompt) const;
  // The same as tokens: BOS first where the vocabulary adds one and the text does not already start with it.
  std::vector<int32_t> tokens(std::span<const chat::Message> messages, bool add_generation_prompt) const;

 private:
  std::optional<chat::ChatTemplate> chat_template_;
  tokenizer::Tokenizer tokenizer_;
  std::string plain_separator_;
};

// The prompt maker for this model: the template chosen by the options, else the model's own, else plain text.
// Throws as ChatTemplateOptions::resolve does.
ChatPrompt make_chat_prompt(const ChatTemplateOptions& options, const gguf::File& model,
                            const tokenizer::Tokenizer& tokenizer, const std::string& plain_separator);

}  // namespace tessera::cli
