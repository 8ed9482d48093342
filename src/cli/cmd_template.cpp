// `tessera template`: renders a conversation with a chat template and prints the prompt exactly as the model
// would be given it (no newline added), to check a template or see what a model is sent.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "cli/chat_template_options.h"
#include "cli/commands.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

namespace {

struct TemplateArgs {
  std::string model;
  ChatTemplateOptions chat_template;
  std::optional<std::string> bos;
  std::optional<std::string> eos;
  std::string messages;
  bool no_generation_prompt = false;
};

// CONV.json: an array of {"role": "...", "content": "..."} objects.
std::vector<chat::Message> read_messages(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read messages file '{}'", path));
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("messages file '{}' is not valid JSON: {}", path, e.what()));
  }
  if (!doc.is_array())
    throw std::runtime_error(
        fmt::format("messages file '{}' must hold an array of {{\"role\", \"content\"}} objects", path));
  std::vector<chat::Message> messages;
  for (size_t i = 0; i < doc.size(); ++i) {
    const nlohmann::json& m = doc[i];
    for (const char* key : {"role", "content"}) {
      if (!m.is_object() || !m.contains(key) || !m[key].is_string())
        throw std::runtime_error(fmt::format("messages file '{}': message {} has no string \"{}\"", path, i, key));
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

void run_template(const TemplateArgs& args) {
  std::unique_ptr<gguf::File> model;
  chat::RenderOptions options;
  if (!args.model.empty()) {
    model = std::make_unique<gguf::File>(gguf::File::open(args.model));
    const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(*model);
    if (tok.bos_id() >= 0) options.bos_token = tok.token_text(tok.bos_id());
    if (tok.eos_id() >= 0) options.eos_token = tok.token_text(tok.eos_id());
  } else if (!args.chat_template.overrides()) {
    throw UsageError("template needs -m MODEL.gguf, --chat-template NAME or --chat-template-file F.jinja");
  }
  if (args.bos) options.bos_token = *args.bos;
  if (args.eos) options.eos_token = *args.eos;
  options.add_generation_prompt = !args.no_generation_prompt;
  const chat::ChatTemplate chat_template = args.chat_template.resolve(model.get());
  const std::vector<chat::Message> messages = read_messages(args.messages);
  const chat::RenderedPrompt prompt = chat_template.render(messages, options);
  std::fwrite(prompt.text.data(), 1, prompt.text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

void add_template_command(CLI::App& root) {
  auto args = std::make_shared<TemplateArgs>();
  CLI::App* cmd = root.add_subcommand("template", "Print the prompt a chat template makes of a conversation");
  cmd->add_option("-m,--model", args->model, "GGUF file whose chat template and BOS/EOS tokens to use");
  args->chat_template.add_to(cmd);
  cmd->add_option("--bos", args->bos, "The BOS token text the template sees (default: the model's, else empty)");
  cmd->add_option("--eos", args->eos, "The EOS token text the template sees (default: the model's, else empty)");
  cmd->add_option("--messages", args->messages, "JSON file: an array of {\"role\", \"content\"} objects")->required();
  cmd->add_flag("--no-generation-prompt", args->no_generation_prompt,
                "Do not end with the header that starts the assistant's reply");
  cmd->callback([args] { run_template(*args); });
}

}  // namespace tessera::cli
