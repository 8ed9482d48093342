// Every real template in tests/chat/data/templates on every conversation, against what Python's jinja2 (set up
// as transformers sets it up) rendered: the same bytes, or the same raise_exception message, or an error.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat_test_data.h"

namespace tessera {
namespace {

using test::chat_data;
using test::read_bytes;

struct Case {
  std::string file;  // the expected file's name
  std::string template_name;
  std::string conversation;
  bool add_generation_prompt = true;
  bool is_error = false;
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const auto& entry : std::filesystem::directory_iterator(chat_data("expected"))) {
    Case c;
    c.file = entry.path().filename().string();
    std::string stem = entry.path().stem().string();
    c.is_error = entry.path().extension() == ".error";
    if (stem.ends_with("__no_gen")) {
      c.add_generation_prompt = false;
      stem.resize(stem.size() - 8);
    }
    const size_t sep = stem.find("__");
    c.template_name = stem.substr(0, sep);
    c.conversation = stem.substr(sep + 2);
    cases.push_back(c);
  }
  std::sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) { return a.file < b.file; });
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.file; }

class RealTemplate : public ::testing::TestWithParam<Case> {};

TEST_P(RealTemplate, RendersAsJinja2Does) {
  const Case& c = GetParam();
  const chat::ChatTemplate tmpl =
      chat::ChatTemplate::parse(read_bytes(chat_data("templates/" + c.template_name + ".jinja")));
  const std::vector<chat::Message> messages = test::conversation(c.conversation);
  const chat::RenderOptions options = test::render_options(c.template_name, c.add_generation_prompt);
  const std::string expected = read_bytes(chat_data("expected/" + c.file));
  if (!c.is_error) {
    EXPECT_EQ(tmpl.render(messages, options).text, expected);
    return;
  }
  test::expect_render_fails_as(tmpl, messages, options, expected);
}

INSTANTIATE_TEST_SUITE_P(Expected, RealTemplate, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string name = info.param.file;
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(RealTemplates, CoverTwentyModelsAndEveryConversation) {
  const std::vector<Case> cases = all_cases();
  std::vector<std::string> templates, conversations;
  for (const Case& c : cases) {
    templates.push_back(c.template_name);
    conversations.push_back(c.conversation);
  }
  std::sort(templates.begin(), templates.end());
  templates.erase(std::unique(templates.begin(), templates.end()), templates.end());
  std::sort(conversations.begin(), conversations.end());
  conversations.erase(std::unique(conversations.begin(), conversations.end()), conversations.end());
  EXPECT_GE(templates.size(), 20u);
  EXPECT_GE(conversations.size(), 8u);
  EXPECT_EQ(cases.size(), templates.size() * conversations.size() + 2 * templates.size());  // + the no_gen pairs
}

}  // namespace
}  // namespace tessera
