// Small templates that each exercise one part of the language (whitespace control, scoping, loops, expressions,
// filters, tests, string methods, tojson, macros, printing, errors), against Python's jinja2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat_test_data.h"

namespace tessera {
namespace {

using test::chat_data;
using test::read_bytes;

std::vector<std::string> snippet_names() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(chat_data("snippets")))
    if (entry.path().extension() == ".jinja") names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

class Snippet : public ::testing::TestWithParam<std::string> {};

TEST_P(Snippet, RendersAsJinja2Does) {
  const std::string& name = GetParam();
  const chat::ChatTemplate tmpl = chat::ChatTemplate::parse(read_bytes(chat_data("snippets/" + name + ".jinja")));
  chat::RenderOptions options = test::render_options("zephyr", true);  // <s> and </s>, as the generator gives
  const std::vector<chat::Message> messages = test::conversation("system_multi_turn");
  const auto txt = chat_data("snippets/expected/" + name + ".txt");
  if (std::filesystem::exists(txt)) {
    EXPECT_EQ(tmpl.render(messages, options).text, read_bytes(txt));
    return;
  }
  const std::string expected = read_bytes(chat_data("snippets/expected/" + name + ".error"));
  test::expect_render_fails_as(tmpl, messages, options, expected);
}

INSTANTIATE_TEST_SUITE_P(Jinja2, Snippet, ::testing::ValuesIn(snippet_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace tessera
