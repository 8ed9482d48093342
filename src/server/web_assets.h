// The chat page's files (web/ in the repository), compiled into the binary at build time by
// cmake/EmbedWebAssets.cmake, so that `tessera serve` needs no file beside it.
#pragma once

#include <string_view>

namespace tessera::server {

struct WebAsset {
  std::string_view path;          // "/index.html", "/app.js", ...
  std::string_view content_type;  // the Content-Type to answer with, charset included for text
  std::string_view body;          // the file's bytes
};

// The file served at `path` ("/" is /index.html), or nullptr if there is none.
const WebAsset* find_web_asset(std::string_view path);

}  // namespace tessera::server
