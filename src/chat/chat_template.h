// Chat templates: turning a conversation into the prompt text a model was trained on, by rendering the model's
// own Jinja template (GGUF key tokenizer.chat_template) the way Hugging Face transformers renders it, or one of
// a few built-in templates. docs/CHAT_TEMPLATES.md lists the Jinja subset and the rules below.
//
// The rendered prompt says which of its bytes came from the messages. Those bytes are text the user typed and
// must never be read as special tokens: pass the ranges to tokenizer::Tokenizer::encode so that a user who types
// "</s>" or "<|im_end|>" gets those characters, while the template's own markup becomes special tokens.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/template_error.h"

namespace tessera::gguf {
class File;
}

namespace tessera::chat {

struct Message {
  std::string role;  // "system", "user", "assistant", ... as the template expects them
  std::string content;
};

struct RenderOptions {
  std::string bos_token;  // the text of the model's BOS and EOS tokens, as the template refers to them
  std::string eos_token;
  bool add_generation_prompt = true;  // end with the header that starts the assistant's reply
  // The local time strftime_now() formats; unset: the system's local time now. Tests fix it.
  std::optional<std::chrono::local_seconds> now;
};

struct RenderedPrompt {
  std::string text;
  // The byte ranges [first, second) of `text` that came from the messages: sorted, disjoint, never adjacent.
  std::vector<std::pair<size_t, size_t>> content_ranges;
};

class ChatTemplate {
 public:
  // Throws TemplateError for a syntax error or an unsupported construct, naming it and its line.
  static ChatTemplate parse(std::string source);
  // One of builtin_names(); throws std::invalid_argument listing them for another name.
  static ChatTemplate builtin(std::string_view name);
  static std::vector<std::string> builtin_names();  // chatml gemma llama2 llama3 mistral phi3 zephyr

  // Throws TemplateRaised when the template calls raise_exception() (e.g. roles that do not alternate), and
  // TemplateError for anything else it cannot do. The template sees `messages` (dicts with role and content),
  // bos_token, eos_token, add_generation_prompt, and tools and documents as none, as transformers passes them.
  RenderedPrompt render(std::span<const Message> messages, const RenderOptions& options) const;

  const std::string& source() const;

 private:
  struct Parsed;
  explicit ChatTemplate(std::shared_ptr<const Parsed> parsed);
  std::shared_ptr<const Parsed> parsed_;  // immutable, so copies share it
};

// The model's template (GGUF key tokenizer.chat_template), if the file has one.
std::optional<std::string> model_chat_template(const gguf::File& file);

}  // namespace tessera::chat
