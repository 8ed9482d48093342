// Hub references and quant-tag matching (src/hub/reference.h): which texts are Hub names, which are local
// paths, which are refused, and which file of a repository a tag picks.
#include <gtest/gtest.h>

#include "hub/reference.h"

namespace tessera::hub {
namespace {

TEST(Reference, TheThreeFormsParse) {
  const auto url = parse_reference("hf://TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf");
  ASSERT_TRUE(url);
  EXPECT_EQ(url->repo, "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF");
  EXPECT_EQ(url->file, "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf");
  EXPECT_EQ(url->quant, "");

  const auto tag = parse_reference("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M");
  ASSERT_TRUE(tag);
  EXPECT_EQ(tag->repo, "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF");
  EXPECT_EQ(tag->file, "");
  EXPECT_EQ(tag->quant, "Q4_K_M");
  EXPECT_EQ(tag->text(), "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M");

  const auto url_tag = parse_reference("hf://owner/repo:q8_0");
  ASSERT_TRUE(url_tag);
  EXPECT_EQ(url_tag->quant, "q8_0");

  const auto in_folder = parse_reference("hf://owner/repo/Q4_K_M/model.gguf");
  ASSERT_TRUE(in_folder);
  EXPECT_EQ(in_folder->file, "Q4_K_M/model.gguf");
}

TEST(Reference, LocalPathsAreNotReferences) {
  for (const char* path : {"model.gguf", "models/model.gguf", "/abs/model.gguf", "./a/b:Q4", "a/b", "a/b/c:Q4",
                           "C:/models/x.gguf", "a/b:", "a/b:Q4.gguf", "../x/y:Q4"})
    EXPECT_FALSE(parse_reference(path)) << path;
}

TEST(Reference, MalformedHubUrlsAreRefused) {
  for (const char* text : {"hf://", "hf://owner", "hf://owner/../x.gguf", "hf://owner/repo/../x.gguf",
                           "hf://owner/repo/x.bin", "hf://owner/repo//x.gguf", "hf://-owner/repo:Q4",
                           "hf://owner/repo:Q4-K", "hf://owner/repo:", "hf://own er/repo:Q4"})
    EXPECT_THROW(parse_reference(text), ReferenceError) << text;
}

TEST(Reference, StoreNamesIncludeThePlainPath) {
  const ModelRef ref = parse_store_name("owner/repo/file.Q8_0.gguf");
  EXPECT_EQ(ref.repo, "owner/repo");
  EXPECT_EQ(ref.file, "file.Q8_0.gguf");
  EXPECT_EQ(parse_store_name("owner/repo:Q8_0").quant, "Q8_0");
  EXPECT_THROW(parse_store_name("just-a-name"), ReferenceError);
}

TEST(QuantTag, MatchesWholeTokensInAnyCase) {
  EXPECT_TRUE(carries_quant_tag("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "Q4_K_M"));
  EXPECT_TRUE(carries_quant_tag("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "q4_k_m"));
  EXPECT_TRUE(carries_quant_tag("Meta-Llama-3-8B-Instruct-Q8_0.gguf", "Q8_0"));
  EXPECT_FALSE(carries_quant_tag("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "Q4_K"));
  EXPECT_FALSE(carries_quant_tag("model-IQ4_XS.gguf", "Q4_XS"));
  EXPECT_FALSE(carries_quant_tag("model.Q4_K_M.gguf", "4_K_M"));
  // The folder a file sits in is not its name.
  EXPECT_FALSE(carries_quant_tag("Q8_0/model.gguf", "Q8_0"));
}

TEST(QuantTag, PicksTheOneGgufFileOrListsTheCandidates) {
  const std::vector<std::string> files = {".gitattributes", "README.md", "model.Q4_K_M.gguf", "model.Q4_K_S.gguf",
                                          "model.Q8_0.gguf"};
  EXPECT_EQ(pick_gguf_file({"o/r", "", "Q4_K_M"}, files), "model.Q4_K_M.gguf");
  try {
    pick_gguf_file({"o/r", "", "Q5_0"}, files);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "no .gguf file in o/r carries the tag 'Q5_0'; it has: model.Q4_K_M.gguf, model.Q4_K_S.gguf, "
                 "model.Q8_0.gguf");
  }
  try {
    pick_gguf_file({"o/r", "", ""}, files);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("o/r matches 3 files"), std::string::npos) << e.what();
  }
  EXPECT_EQ(pick_gguf_file({"o/r", "", ""}, {"README.md", "only.gguf"}), "only.gguf");
  EXPECT_THROW(pick_gguf_file({"o/r", "", "Q8_0"}, {"README.md"}), std::runtime_error);
}

TEST(QuantTag, SplitModelsAreRefusedByName) {
  const std::vector<std::string> files = {"big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf"};
  try {
    pick_gguf_file({"o/r", "", "Q4_K_M"}, files);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("is split into 2 files"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::hub
