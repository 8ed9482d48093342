#include "cli/chat_template_options.h"

#include <fmt/format.h>

#include <algorithm>

#include "cli/commands.h"
#include "io/input_file.h"

namespace tessera::cli {

void ChatTemplateOptions::add_to(CLI::App* app) {
  const std::vector<std::string> names = chat::ChatTemplate::builtin_names();
  auto* by_name =
      app->add_option("--chat-template", name,
                      fmt::format("Use a built-in chat template instead of the model's: {}", fmt::join(names, ", ")));
  auto* by_file = app->add_option("--chat-template-file", file, "Use the Jinja chat template in this file");
  by_name->excludes(by_file);
}

chat::ChatTemplate ChatTemplateOptions::resolve(const gguf::File* model) const {
  if (!name.empty()) {
    const std::vector<std::string> names = chat::ChatTemplate::builtin_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw UsageError(fmt::format("unknown chat template '{}' (built-in: {})", name, fmt::join(names, ", ")));
    return chat::ChatTemplate::builtin(name);
  }
  if (!file.empty()) {
    return chat::ChatTemplate::parse(io::read_text_input(file, "chat template file"));
  }
  if (model) {
    if (std::optional<std::string> source = chat::model_chat_template(*model))
      return chat::ChatTemplate::parse(std::move(*source));
    throw std::runtime_error(
        "the model has no chat template (tokenizer.chat_template); choose one with --chat-template or "
        "--chat-template-file");
  }
  throw UsageError("no chat template: give a model (-m), --chat-template or --chat-template-file");
}

}  // namespace tessera::cli
