// `tessera template` through the binary: the prompt printed byte for byte as jinja2 renders it, templates from a
// file, the built-ins and a model's GGUF, BOS/EOS from the model's vocabulary, and one-line errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat_test_data.h"
#include "common/run_tessera.h"
#include "gguf/gguf.h"

namespace tessera {
namespace {

using test::chat_data;
using test::read_bytes;
using test::run_tessera;

std::string quoted(const std::string& s) { return "'" + s + "'"; }  // no test string holds a single quote

std::string token_args(const std::string& template_name) {
  const nlohmann::json tokens = nlohmann::json::parse(read_bytes(chat_data("special_tokens.json")))[template_name];
  return " --bos " + quoted(tokens["bos_token"].get<std::string>()) + " --eos " +
         quoted(tokens["eos_token"].get<std::string>());
}

std::string messages(const std::string& conversation) {
  return " --messages " + chat_data("conversations/" + conversation + ".json").string();
}

// A vocabulary-only GGUF (the llama SentencePiece fixture: <s> and </s>) with a chat template added.
std::filesystem::path model_with_template(const std::string& source, const std::string& file_name) {
  const gguf::File vocab = gguf::File::open(test::fixture("vocab/ggml-vocab-llama-spm.gguf").string());
  gguf::Writer writer;
  for (const auto& [key, value] : vocab.metadata()) writer.set(key, value);
  writer.set("tokenizer.chat_template", source);
  const auto path = std::filesystem::temp_directory_path() / file_name;
  writer.write(path.string());
  return path;
}

TEST(TemplateCli, PrintsWhatJinja2RendersForEveryTemplate) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(chat_data("templates"))) {
    const std::string name = entry.path().stem().string();
    if (read_bytes(entry.path()).find("strftime_now") != std::string::npos) continue;  // renders today's date
    for (const std::string conversation : {"system_multi_turn", "markup"}) {
      const auto expected = chat_data("expected/" + name + "__" + conversation + ".txt");
      if (!std::filesystem::exists(expected)) continue;  // the template refuses this conversation
      const auto r = run_tessera("template --chat-template-file " + entry.path().string() + token_args(name) +
                                 messages(conversation));
      ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
      EXPECT_EQ(r.out, read_bytes(expected)) << name << " on " << conversation;
      ++checked;
    }
  }
  EXPECT_GE(checked, 40);
}

TEST(TemplateCli, NoGenerationPrompt) {
  const auto r = run_tessera("template --chat-template-file " + chat_data("templates/qwen2.5-instruct.jinja").string() +
                             token_args("qwen2.5-instruct") + messages("multi_turn") + " --no-generation-prompt");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, read_bytes(chat_data("expected/qwen2.5-instruct__multi_turn__no_gen.txt")));
}

TEST(TemplateCli, BuiltInByName) {
  const auto r = run_tessera("template --chat-template llama3" + token_args("llama-3-instruct") + messages("unicode"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, read_bytes(chat_data("expected/llama-3-instruct__unicode.txt")));
}

TEST(TemplateCli, RaiseExceptionIsExitOneWithTheMessage) {
  const auto r = run_tessera("template --chat-template gemma" + messages("system_user"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "error: System role not supported\n");
}

TEST(TemplateCli, ModelTemplateWithBosAndEosFromItsVocabulary) {
  const auto path = model_with_template(read_bytes(chat_data("templates/zephyr.jinja")), "tessera-chat-zephyr.gguf");
  const auto r = run_tessera("template -m " + path.string() + messages("system_multi_turn"));
  std::filesystem::remove(path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, read_bytes(chat_data("expected/zephyr__system_multi_turn.txt")));  // rendered with <s>, </s>
}

TEST(TemplateCli, OverridingAModelWithoutATemplate) {
  const std::string model = test::fixture("models/tiny-llama-Q8_0.gguf").string();
  const auto none = run_tessera("template -m " + model + messages("system_user"));
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_EQ(none.err,
            "error: the model has no chat template (tokenizer.chat_template); choose one with --chat-template or "
            "--chat-template-file\n");
  const auto r = run_tessera("template -m " + model + " --chat-template llama2" + messages("system_multi_turn"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, read_bytes(chat_data("expected/llama-2-chat__system_multi_turn.txt")));  // its <s> and </s>
}

TEST(TemplateCli, BadInputIsOneLine) {
  const auto unknown = run_tessera("template --chat-template vicuna" + messages("system_user"));
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_EQ(unknown.err,
            "error: unknown chat template 'vicuna' (built-in: chatml, gemma, llama2, llama3, mistral, phi3, zephyr)\n");

  const auto no_source = run_tessera("template" + messages("system_user"));
  EXPECT_EQ(no_source.exit_code, 2);
  EXPECT_NE(no_source.err.find("template needs -m MODEL.gguf"), std::string::npos) << no_source.err;

  const auto dir = std::filesystem::temp_directory_path();
  const auto bad_json = dir / "tessera-chat-bad.json";
  std::ofstream(bad_json) << R"([{"role": "user"}])";
  const auto bad = run_tessera("template --chat-template chatml --messages " + bad_json.string());
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.err, "error: messages file '" + bad_json.string() + "': message 0 has no string \"content\"\n");
  std::filesystem::remove(bad_json);

  const auto bad_template = dir / "tessera-chat-bad.jinja";
  std::ofstream(bad_template) << "line one\n{{ messages | shuffle }}";
  const auto unsupported =
      run_tessera("template --chat-template-file " + bad_template.string() + messages("system_user"));
  EXPECT_EQ(unsupported.exit_code, 1);
  EXPECT_EQ(unsupported.err, "error: chat template line 2: unsupported filter 'shuffle'\n");
  std::filesystem::remove(bad_template);
}

}  // namespace
}  // namespace tessera
