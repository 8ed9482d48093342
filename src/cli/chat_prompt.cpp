#include "cli/chat_prompt.h"


namespace tessera::cli {

ChatPrompt::ChatPrompt(std::optional<chat::ChatTemplate> chat_template, tokenizer::Tokenizer tokenizer,
                       std::string plain_separator)
    : chat_template_(std::move(chat_template)),
      tokenizer_(std::move(tokenizer)),
      plain_separator_(std::move(plain_separator)) {}

chat::RenderedPrompt ChatPrompt::render(std::span<const chat::Message> messages, bool add_generation_prompt) const {
  if (chat_template_) {
    chat::RenderOptions options;
    if (tokenizer_.bos_id() >= 0) options.bos_token = tokenizer_.token_text(tokenizer_.bos_id());
    if (tokenizer_.eos_id() >= 0) options.eos_token = tokenizer_.token_text(tokenizer_.eos_id());
    options.add_generation_prompt = add_generation_prompt;
    return chat_template_->render(messages, options);
  }
  chat::RenderedPrompt prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i > 0) prompt.text += plain_separator_;
    const size_t begin = prompt.text.size();
    prompt.text += messages[i].content;
    if (prompt.text.size() > begin) prompt.content_ranges.emplace_back(begin, prompt.text.size());
  }
  return prompt;
}

std::vector<int32_t> ChatPrompt::tokens(std::span<const chat::Message> messages, bool add_generation_prompt) const {
  const chat::RenderedPrompt prompt = render(messages, add_generation_prompt);
  const std::string bos = tokenizer_.bos_id() >= 0 ? tokenizer_.token_text(tokenizer_.bos_id()) : std::string();
  const bool starts_with_bos = !bos.empty() && prompt.text.starts_with(bos);
  return tokenizer_.encode(prompt.text, !starts_with_bos, prompt.content_ranges);
}

ChatPrompt make_chat_prompt(const ChatTemplateOptions& options, const gguf::File& model,
                            const tokenizer::Tokenizer& tokenizer, const std::string& plain_separator) {
  std::optional<chat::ChatTemplate> chosen;
  if (options.overrides() || chat::model_chat_template(model)) chosen = options.resolve(&model);
  return ChatPrompt(std::move(chosen), tokenizer, plain_separator);
}

}  // namespace tessera::cli
