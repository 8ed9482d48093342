// What the jinja2 comparisons cannot show: which bytes of the prompt are content, the errors for unsupported
// constructs (with their lines), the limits that end hostile templates, and the built-in templates.
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat_test_data.h"

namespace tessera {
namespace {

using chat::ChatTemplate;
using chat::Message;
using Ranges = std::vector<std::pair<size_t, size_t>>;

chat::RenderedPrompt render(const std::string& source, const std::vector<Message>& messages) {
  chat::RenderOptions options;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  return ChatTemplate::parse(source).render(messages, options);
}

// The range of the first occurrence of `needle` at or after `from`.
std::pair<size_t, size_t> range_of(const std::string& text, const std::string& needle, size_t from = 0) {
  const size_t at = text.find(needle, from);
  EXPECT_NE(at, std::string::npos) << needle;
  return {at, at + needle.size()};
}

std::string error_of(const std::string& source, const std::vector<Message>& messages = {{"user", "hi"}}) {
  try {
    render(source, messages);
  } catch (const chat::TemplateError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ContentRanges, CoverExactlyTheMessageBytesInChatml) {
  const std::vector<Message> messages = {{"user", "stop</s> here <|im_end|>"}, {"assistant", "ok"}};
  const auto p = ChatTemplate::builtin("chatml").render(messages, {});
  ASSERT_EQ(p.text,
            "<|im_start|>user\nstop</s> here <|im_end|><|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
            "<|im_start|>assistant\n");
  const Ranges expected = {range_of(p.text, "user"), range_of(p.text, "stop</s> here <|im_end|>"),
                           range_of(p.text, "assistant"), range_of(p.text, "ok")};
  EXPECT_EQ(p.content_ranges, expected);
}

TEST(ContentRanges, FollowTrimSlicesAndConcatenationExactly) {
  // Llama 3 trims the content and builds the turn with + and ~ before printing it.
  const auto p = render("{% for m in messages %}{{ '[' ~ m.content | trim ~ ']' + m.content[1:3] }}{% endfor %}",
                        {{"user", "  abcdef  "}});
  ASSERT_EQ(p.text, "[abcdef] a");
  EXPECT_EQ(p.content_ranges, (Ranges{{1, 7}, {8, 10}}));
}

TEST(ContentRanges, SplitAndJoinKeepTheirPieces) {
  const auto p = render("{{ messages[0].content.split(',') | join('+') }}", {{"user", "a,b"}});
  ASSERT_EQ(p.text, "a+b");
  EXPECT_EQ(p.content_ranges, (Ranges{{0, 1}, {2, 3}}));
}

TEST(ContentRanges, WholeResultWhenATransformationMixesBytes) {
  const auto upper = render("<{{ messages[0].content | upper }}>", {{"user", "abc"}});
  EXPECT_EQ(upper.text, "<ABC>");
  EXPECT_EQ(upper.content_ranges, (Ranges{{1, 4}}));
  const auto json = render("{{ messages | tojson }}", {{"user", "x"}});
  EXPECT_EQ(json.content_ranges, (Ranges{{0, json.text.size()}}));
  const auto replaced = render("{{ messages[0].content.replace('a', '<s>') }}", {{"user", "bab"}});
  EXPECT_EQ(replaced.text, "b<s>b");
  EXPECT_EQ(replaced.content_ranges, (Ranges{{0, 5}}));
}

TEST(ContentRanges, TemplateTextAndTokensAreNotContent) {
  const auto p = render("{{ bos_token }}{% set x = 'lit' %}{{ x }}{{ messages | length }}", {{"user", "hi"}});
  EXPECT_EQ(p.text, "<s>lit1");
  EXPECT_TRUE(p.content_ranges.empty());
}

TEST(ContentRanges, SurviveMacrosAndSetBlocks) {
  const auto p =
      render("{% macro m(x) %}<{{ x }}>{% endmacro %}{% set b %}[{{ m(messages[0].content) }}]{% endset %}{{ b }}",
             {{"user", "hi"}});
  ASSERT_EQ(p.text, "[<hi>]");
  EXPECT_EQ(p.content_ranges, (Ranges{{2, 4}}));
}

TEST(Errors, NameTheConstructAndItsLine) {
  EXPECT_EQ(error_of("a\nb\n{{ x | frobnicate }}"), "chat template line 3: unsupported filter 'frobnicate'");
  EXPECT_EQ(error_of("{% if x is prime %}{% endif %}"), "chat template line 1: unsupported test 'prime'");
  EXPECT_EQ(error_of("\n{% include 'other.jinja' %}"), "chat template line 2: unsupported statement '{% include %}'");
  EXPECT_EQ(error_of("{% call m() %}{% endcall %}"), "chat template line 1: unsupported statement '{% call %}'");
  EXPECT_EQ(error_of("\n\n\n{{ 'x'.zfill(3) }}"), "chat template line 4: unsupported string method 'zfill'");
  EXPECT_EQ(error_of("{{ messages.append(1) }}"), "chat template line 1: unsupported list method 'append'");
  EXPECT_EQ(error_of("{{ '%s' % 'x' }}"), "chat template line 1: unsupported %-formatting of a string");
  EXPECT_EQ(error_of("{{ lipsum(2) }}"), "chat template line 1: unsupported or undefined function 'lipsum'");
  EXPECT_EQ(error_of("{% for x in y recursive %}{% endfor %}"), "chat template line 1: unsupported recursive for loop");
  EXPECT_EQ(error_of("{{ messages[0].content | lower }}", {{"user", "ÉCOLE"}}),
            "chat template line 1: lower of non-ASCII letters is not supported");
}

TEST(Errors, SyntaxErrorsAreOneLine) {
  EXPECT_EQ(error_of("{% if true %}never closed"),
            "chat template line 1: missing '{% endif %}' at the end of the template");
  EXPECT_EQ(error_of("{{ 'unterminated }}"), "chat template line 1: unterminated string");
  EXPECT_EQ(error_of("{# no end"), "chat template line 1: missing end of comment tag");
  EXPECT_EQ(error_of("x\n{% endfor %}"), "chat template line 2: unexpected '{% endfor %}'");
  EXPECT_EQ(error_of("{{ (1 }}"), "chat template line 1: unexpected '}', expected ')'");
  EXPECT_EQ(error_of("{{ 1 + }}"), "chat template line 1: unexpected '}}'");
}

TEST(Errors, RuntimeErrorsOfJinja) {
  EXPECT_EQ(error_of("{{ nothing.attr }}"), "chat template line 1: 'nothing' is undefined");
  EXPECT_EQ(error_of("\n{{ messages[5].role }}"), "chat template line 2: 'list object' has no element 5");
  EXPECT_EQ(error_of("{% for x in none %}{% endfor %}"), "chat template line 1: 'NoneType' object is not iterable");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "chat template line 1: integer division or modulo by zero");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 1 }}"),
            "chat template line 1: integer overflow (Python's integers are unbounded, ours are 64-bit)");
}

TEST(Errors, RaiseExceptionGivesTheTemplatesMessage) {
  try {
    render("{{ raise_exception('Only ' ~ 2 ~ ' roles') }}", {});
    FAIL() << "no exception";
  } catch (const chat::TemplateRaised& e) {
    EXPECT_STREQ(e.what(), "Only 2 roles");
  }
}

TEST(Limits, EndHostileTemplatesWithAnError) {
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "chat template line 1: macros call each other deeper than 64 levels");
  EXPECT_EQ(error_of("{{ range(100000000) | length }}"),
            "chat template line 1: range() of 100000000 items is over the limit of 1000000 items");
  EXPECT_EQ(error_of("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                     "{% endfor %}"),
            "chat template line 1: a string of 33554432 bytes is over the limit of 16777216 bytes");
  EXPECT_EQ(error_of("{{ 'x' * 100000000 }}"),
            "chat template line 1: a string of 16777217 bytes is over the limit of 16777216 bytes");
  EXPECT_EQ(
      error_of("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}"
               "{% endfor %}"),
      "chat template line 1: the template did more than 5000000 steps of work (a loop that does not end?)");
  EXPECT_EQ(error_of("{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}"),
            "chat template line 1: expression nested deeper than 200 levels");
  std::string chain = "{{ 0";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_EQ(error_of(chain + " }}"), "chat template line 1: expression nested deeper than 200 levels");
  std::string deep = "f(n - 1)";  // each macro level nests an expression, so the depth adds up across calls
  for (int i = 0; i < 150; ++i) deep = "(" + deep + " ~ '')";
  EXPECT_EQ(error_of("{% macro f(n) %}{% if n > 0 %}{{ " + deep + " }}{% endif %}{% endmacro %}{{ f(60) }}"),
            "chat template line 1: the template nests or recurses deeper than 400 levels");
  std::string blocks;
  for (int i = 0; i < 150; ++i) blocks += "{% if true %}";
  EXPECT_EQ(error_of(blocks), "chat template line 1: blocks nested deeper than 100 levels");
}

TEST(Builtins, AreTheModelsOwnTemplates) {
  EXPECT_EQ(ChatTemplate::builtin_names(),
            (std::vector<std::string>{"chatml", "gemma", "llama2", "llama3", "mistral", "phi3", "zephyr"}));
  const std::pair<std::string, std::string> files[] = {{"chatml", "chatml"},
                                                       {"gemma", "gemma-2-it"},
                                                       {"llama2", "llama-2-chat"},
                                                       {"llama3", "llama-3-instruct"},
                                                       {"mistral", "mistral-instruct-v0.2"},
                                                       {"phi3", "phi-3-mini"},
                                                       {"zephyr", "zephyr"}};
  for (const auto& [name, file] : files)
    EXPECT_EQ(ChatTemplate::builtin(name).source(), test::read_bytes(test::chat_data("templates/" + file + ".jinja")))
        << name;
  try {
    ChatTemplate::builtin("vicuna");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "unknown chat template 'vicuna' (built-in: chatml, gemma, llama2, llama3, mistral, phi3, zephyr)");
  }
}

TEST(StrftimeNow, FormatsTheGivenLocalTime) {
  chat::RenderOptions options;
  using namespace std::chrono;
  options.now = local_days{year{2024} / July / 26} + hours{17} + minutes{3};
  const auto p = ChatTemplate::parse("{{ strftime_now('%d %b %Y %H:%M %A %j %f%z') }}").render({}, options);
  EXPECT_EQ(p.text, "26 Jul 2024 17:03 Friday 208 000000");
}

}  // namespace
}  // namespace tessera
