// The options that choose a chat template, shared by the commands that format conversations: the model's own
// template unless --chat-template NAME (a built-in) or --chat-template-file F.jinja overrides it.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "chat/chat_template.h"
#include "gguf/gguf.h"

namespace tessera::cli {

struct ChatTemplateOptions {
  std::string name;  // a built-in template
  std::string file;  // a Jinja file

  void add_to(CLI::App* app);
  bool overrides() const { return !name.empty() || !file.empty(); }
  // The override if one is given, else the model's template. Throws UsageError for an unknown built-in name,
  // std::runtime_error for an unreadable file or a model without a template, TemplateError for a bad template.
  chat::ChatTemplate resolve(const gguf::File* model) const;
};

}  // namespace tessera::cli
