// What the Hub's replies say: the repository file listing (`/api/models/OWNER/NAME/tree/main`), its pagination
// Link header, the ETag that carries an LFS file's sha256, and Content-Range. Pure parsing of untrusted text:
// every function either returns a checked value or throws ReplyError / returns nullopt (fuzz/fuzz_hub_replies).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::hub {

class ReplyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RemoteFile {
  std::string path;    // inside the repository
  uint64_t size = 0;   // bytes of the file itself (the LFS object's size for LFS files)
  std::string sha256;  // lowercase hex of the LFS object; "" for files kept in git itself
};

// The JSON array the tree endpoint returns: entries of type "file" with path, size and, for LFS files,
// lfs.oid (the sha256) and lfs.size; "directory" entries are skipped. Throws ReplyError naming what is wrong.
std::vector<RemoteFile> parse_tree_listing(std::string_view json);

// The URL of the rel="next" link in an HTTP Link header, nullopt when there is none.
std::optional<std::string> parse_link_next(std::string_view link_header);

// The sha256 an ETag (or X-Linked-Etag) value carries: `"<64 hex>"` or `W/"<64 hex>"`, lowercased. nullopt for
// any other ETag, e.g. the 40-hex git blob id of a file that is not in LFS.
std::optional<std::string> sha256_from_etag(std::string_view etag);

bool is_sha256_hex(std::string_view s);  // 64 hex digits, either case

// "bytes FIRST-LAST/TOTAL" with FIRST <= LAST < TOTAL.
struct ContentRange {
  uint64_t first = 0, last = 0, total = 0;
};
std::optional<ContentRange> parse_content_range(std::string_view value);

// One header line as libcurl hands it over ("Name: value\r\n"): the name lowercased, the value trimmed.
// nullopt for status lines, the blank line that ends the headers, and lines without a colon.
std::optional<std::pair<std::string, std::string>> parse_header_line(std::string_view line);

// A decimal number of at most 19 digits with nothing around it (Content-Length, X-Linked-Size).
std::optional<uint64_t> parse_decimal(std::string_view s);

}  // namespace tessera::hub
