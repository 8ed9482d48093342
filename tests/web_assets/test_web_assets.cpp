// The files of web/ compiled into the binary are the files on disk, byte for byte, served at their own paths
// with the right Content-Type, and the page refers to nothing but them.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>

#include "server/web_assets.h"

namespace {

namespace fs = std::filesystem;
using tessera::server::find_web_asset;
using tessera::server::WebAsset;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool is_editor_file(const fs::path& path) {
  const std::string name = path.filename().string();
  return name.starts_with('.') || name.ends_with('~');
}

TEST(WebAssets, EveryFileUnderWebIsEmbeddedByteForByte) {
  const fs::path web_dir = TESSERA_WEB_DIR;
  int files = 0;
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(web_dir)) {
    if (!entry.is_regular_file() || is_editor_file(entry.path())) continue;
    const std::string path = std::string("/").append(fs::relative(entry.path(), web_dir).generic_string());
    const WebAsset* asset = find_web_asset(path);
    ASSERT_NE(asset, nullptr) << path << " is not embedded";
    EXPECT_EQ(asset->path, path);
    const std::string on_disk = read_bytes(entry.path());
    ASSERT_EQ(asset->body.size(), on_disk.size()) << path;
    EXPECT_TRUE(asset->body == on_disk) << path << " differs from the file on disk";
    ++files;
  }
  EXPECT_GE(files, 3) << "web/ should hold at least index.html, app.js and style.css";
}

TEST(WebAssets, ContentTypeFollowsTheExtension) {
  ASSERT_NE(find_web_asset("/index.html"), nullptr);
  ASSERT_NE(find_web_asset("/app.js"), nullptr);
  ASSERT_NE(find_web_asset("/style.css"), nullptr);
  EXPECT_EQ(find_web_asset("/index.html")->content_type, "text/html; charset=utf-8");
  EXPECT_EQ(find_web_asset("/app.js")->content_type, "text/javascript; charset=utf-8");
  EXPECT_EQ(find_web_asset("/style.css")->content_type, "text/css; charset=utf-8");
}

TEST(WebAssets, RootIsTheIndexPage) {
  const WebAsset* root = find_web_asset("/");
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(root, find_web_asset("/index.html"));
  EXPECT_NE(root->body.find("<!doctype html>"), std::string_view::npos);
}

TEST(WebAssets, OtherPathsFindNothing) {
  for (const char* path : {"", "index.html", "/missing.js", "/../CMakeLists.txt", "/web/index.html", "/index.html/",
                           "/INDEX.HTML", "/index.html?x=1", "//index.html"}) {
    EXPECT_EQ(find_web_asset(path), nullptr) << path;
  }
}

// Machines that run models are often offline: every file the page loads must be one of ours.
TEST(WebAssets, ThePageLoadsOnlyEmbeddedFiles) {
  const std::string page(find_web_asset("/index.html")->body);
  const std::regex reference(R"re((?:src|href)="([^"]*)")re");
  int references = 0;
  for (auto it = std::sregex_iterator(page.begin(), page.end(), reference); it != std::sregex_iterator(); ++it) {
    const std::string target = (*it)[1];
    ++references;
    if (target.starts_with("data:")) continue;
    EXPECT_NE(find_web_asset(std::string("/").append(target)), nullptr) << "index.html loads " << target;
  }
  EXPECT_GE(references, 2);
}

}  // namespace
