// The chat template test data in tests/chat/data: real templates, conversations, and the prompts Python's jinja2
// renders from them (scripts/gen-chat-template-expected.py).
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "chat/chat_template.h"

namespace tessera::test {

inline std::filesystem::path chat_data(const std::string& relative) {
  return std::filesystem::path(TESSERA_TEST_DATA_DIR) / relative;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::vector<chat::Message> conversation(const std::string& name) {
  const nlohmann::json doc = nlohmann::json::parse(read_bytes(chat_data("conversations/" + name + ".json")));
  std::vector<chat::Message> messages;
  for (const auto& m : doc) messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return messages;
}

// The BOS/EOS texts the generator gave each template, and the moment its strftime_now renders.
inline chat::RenderOptions render_options(const std::string& template_name, bool add_generation_prompt) {
  static const nlohmann::json tokens = nlohmann::json::parse(read_bytes(chat_data("special_tokens.json")));
  chat::RenderOptions o;
  o.bos_token = tokens.at(template_name).at("bos_token").get<std::string>();
  o.eos_token = tokens.at(template_name).at("eos_token").get<std::string>();
  o.add_generation_prompt = add_generation_prompt;
  using namespace std::chrono;
  o.now = local_days{year{2025} / January / 7} + hours{9} + minutes{5} + seconds{3};
  return o;
}

// Checks that rendering fails as Python's jinja2 did, given the generator's error file: a first line naming the
// kind ("raise_exception" or jinja2's error class) and the message after it.
inline void expect_render_fails_as(const chat::ChatTemplate& tmpl, const std::vector<chat::Message>& messages,
                                   const chat::RenderOptions& options, const std::string& error_file) {
  const std::string kind = error_file.substr(0, error_file.find('\n'));
  const std::string message = error_file.substr(error_file.find('\n') + 1);
  if (kind == "raise_exception") {
    try {
      tmpl.render(messages, options);
      ADD_FAILURE() << "expected raise_exception(\"" << message << "\")";
    } catch (const chat::TemplateRaised& e) {
      EXPECT_EQ(std::string(e.what()), message);
    }
  } else {
    EXPECT_THROW(tmpl.render(messages, options), chat::TemplateError) << "jinja2 failed with: " << message;
  }
}

}  // namespace tessera::test
