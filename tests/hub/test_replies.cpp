// Parsing the Hub's replies (src/hub/replies.h): the tree listing as the Hub returns it, pagination links,
// ETags, Content-Range and header lines, with the malformed cases each refuses.
#include <gtest/gtest.h>

#include "hub/replies.h"

namespace tessera::hub {
namespace {

const std::string kSha = "9fbe2ac0c6cd5f6d4b3f1a0e6d1b2c3d4e5f60718293a4b5c6d7e8f901234567";

TEST(TreeListing, FilesWithTheirLfsSha256AndSize) {
  const std::string json = R"([
    {"type":"file","oid":"a3f1","size":1519,"path":".gitattributes"},
    {"type":"directory","oid":"77","size":0,"path":"sub"},
    {"type":"file","oid":"5e1c","size":134,"path":"sub/m.Q4_K_M.gguf",
     "lfs":{"oid":")" + std::string("9FBE2AC0C6CD5F6D4B3F1A0E6D1B2C3D4E5F60718293A4B5C6D7E8F901234567") +
                           R"(","size":668788096,"pointerSize":134},"xetHash":"ab"}
  ])";
  const std::vector<RemoteFile> files = parse_tree_listing(json);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].path, ".gitattributes");
  EXPECT_EQ(files[0].size, 1519u);
  EXPECT_EQ(files[0].sha256, "");
  EXPECT_EQ(files[1].path, "sub/m.Q4_K_M.gguf");
  EXPECT_EQ(files[1].size, 668788096u);  // the LFS object's, not the pointer's
  EXPECT_EQ(files[1].sha256, kSha);
}

TEST(TreeListing, MalformedListingsAreRefused) {
  for (const char* json : {"", "{}", "[1]", R"([{"type":"file"}])", R"([{"type":"file","path":"a","size":-1}])",
                           R"([{"type":"file","path":"a","size":"12"}])",
                           R"([{"type":"file","path":"a","size":1,"lfs":{"oid":"abc","size":1}}])",
                           R"([{"type":"file","path":"a","size":1,"lfs":{"size":1}}])",
                           R"([{"type":"file","path":"a","size":1,"lfs":7}])", "[{\"type\":"})
    EXPECT_THROW(parse_tree_listing(json), ReplyError) << json;
}

TEST(LinkHeader, FindsTheNextPage) {
  EXPECT_EQ(parse_link_next(R"(<https://hub/api/models/o/r/tree/main?cursor=abc>; rel="next")"),
            "https://hub/api/models/o/r/tree/main?cursor=abc");
  EXPECT_EQ(parse_link_next(R"(<https://a/prev>; rel="prev", <https://a/next>; rel="next")"), "https://a/next");
  EXPECT_FALSE(parse_link_next(R"(<https://a/prev>; rel="prev")"));
  EXPECT_FALSE(parse_link_next("<https://a/next"));
  EXPECT_FALSE(parse_link_next(""));
}

TEST(Etag, CarriesTheSha256OfLfsFilesOnly) {
  EXPECT_EQ(sha256_from_etag("\"" + kSha + "\""), kSha);
  EXPECT_EQ(sha256_from_etag("W/\"" + kSha + "\""), kSha);
  std::string upper = kSha;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(sha256_from_etag(upper), kSha);
  EXPECT_FALSE(sha256_from_etag("\"a3f1c2e4b5d6a7f8091a2b3c4d5e6f7081928374\""));  // a git blob id
  EXPECT_FALSE(sha256_from_etag("\"" + kSha.substr(1) + "g\""));
  EXPECT_FALSE(sha256_from_etag(""));
}

TEST(ContentRange, ChecksItsNumbers) {
  const auto r = parse_content_range("bytes 400000-1967615/1967616");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 400000u);
  EXPECT_EQ(r->last, 1967615u);
  EXPECT_EQ(r->total, 1967616u);
  for (const char* bad : {"bytes 5-4/10", "bytes 0-10/10", "bytes */10", "items 0-1/2", "bytes 0-1", "bytes -1-2/3",
                          "bytes 0-1/99999999999999999999"})
    EXPECT_FALSE(parse_content_range(bad)) << bad;
}

TEST(HeaderLine, NameLoweredValueTrimmed) {
  const auto h = parse_header_line("X-Linked-Size:  668788096 \r\n");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->first, "x-linked-size");
  EXPECT_EQ(h->second, "668788096");
  EXPECT_FALSE(parse_header_line("HTTP/1.1 302 Found\r\n"));
  EXPECT_FALSE(parse_header_line("\r\n"));
  EXPECT_FALSE(parse_header_line(": no name\r\n"));
  EXPECT_FALSE(parse_header_line("Bad Name: x\r\n"));
}

TEST(Decimal, StrictDigitsOnly) {
  EXPECT_EQ(parse_decimal("0"), 0u);
  EXPECT_EQ(parse_decimal("18446744073709551"), 18446744073709551u);
  EXPECT_FALSE(parse_decimal(""));
  EXPECT_FALSE(parse_decimal("12 "));
  EXPECT_FALSE(parse_decimal("-1"));
  EXPECT_FALSE(parse_decimal("99999999999999999999"));
}

}  // namespace
}  // namespace tessera::hub
