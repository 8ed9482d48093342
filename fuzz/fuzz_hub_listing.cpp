// libFuzzer target for the parsers of what the Hub and the store hand back (src/hub/replies.h, store.h,
// reference.h): any input must be parsed into checked values or refused with the parser's own error, never
// crash, read out of bounds or loop. Each parser sees the whole input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "hub/reference.h"
#include "hub/replies.h"
#include "hub/store.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera::hub;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  try {
    for (const RemoteFile& f : parse_tree_listing(text)) check(f.sha256.empty() || is_sha256_hex(f.sha256));
  } catch (const ReplyError&) {
  }
  if (const auto next = parse_link_next(text)) check(next->size() < size);
  if (const auto sha = sha256_from_etag(text)) check(is_sha256_hex(*sha) && *sha256_from_etag(*sha) == *sha);
  if (const auto range = parse_content_range(text)) check(range->first <= range->last && range->last < range->total);
  if (const auto header = parse_header_line(text)) check(!header->first.empty());
  if (const auto n = parse_decimal(text)) check(std::to_string(*n).size() <= size);

  // A manifest that parses writes back to the same manifest.
  try {
    const Manifest m = manifest_from_json(text);
    const Manifest again = manifest_from_json(to_json(m));
    check(again.source.url == m.source.url && again.source.size == m.source.size &&
          again.source.sha256 == m.source.sha256 && again.source.commit == m.source.commit &&
          again.downloaded_at == m.downloaded_at);
  } catch (const std::runtime_error&) {
  }

  // References come from the command line, but they become paths in the store: no accepted one may leave it.
  try {
    if (const auto ref = parse_reference(text)) {
      check(is_valid_repo_id(ref->repo));
      const std::string inside = (std::filesystem::path("/store") / ref->repo / ref->file).lexically_normal().string();
      check(inside.starts_with("/store/" + ref->repo + "/") || (ref->file.empty() && inside == "/store/" + ref->repo));
    }
  } catch (const ReferenceError&) {
  }
  return 0;
}
