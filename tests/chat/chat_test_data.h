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

}  // namespace tessera::test
