#include "hub/replies.h"

#include <fmt/format.h>

#include <cctype>
#include <nlohmann/json.hpp>

namespace tessera::hub {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

uint64_t size_field(const nlohmann::json& object, const char* key, const std::string& path) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number_unsigned())
    throw ReplyError(fmt::format("the Hub's file listing gives '{}' no '{}' count", path, key));
  return it->get<uint64_t>();
}

}  // namespace

std::vector<RemoteFile> parse_tree_listing(std::string_view json) {
  const nlohmann::json doc = nlohmann::json::parse(json, nullptr, false);
  if (doc.is_discarded()) throw ReplyError("the Hub's file listing is not valid JSON");
  if (!doc.is_array()) throw ReplyError("the Hub's file listing is not a JSON array");
  std::vector<RemoteFile> files;
  for (const nlohmann::json& entry : doc) {
    if (!entry.is_object()) throw ReplyError("the Hub's file listing holds an entry that is not an object");
    const auto type = entry.find("type");
    const auto path = entry.find("path");
    if (type == entry.end() || !type->is_string() || path == entry.end() || !path->is_string())
      throw ReplyError("the Hub's file listing holds an entry without a type and path");
    if (type->get_ref<const std::string&>() != "file") continue;
    RemoteFile file;
    file.path = path->get<std::string>();
    file.size = size_field(entry, "size", file.path);
    if (const auto lfs = entry.find("lfs"); lfs != entry.end() && !lfs->is_null()) {
      const auto oid = lfs->is_object() ? lfs->find("oid") : lfs->end();
      if (oid == lfs->end() || !oid->is_string() || !is_sha256_hex(oid->get_ref<const std::string&>()))
        throw ReplyError(fmt::format("the Hub's file listing gives '{}' an LFS entry without a sha256", file.path));
      file.sha256 = oid->get<std::string>();
      for (char& c : file.sha256) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      file.size = size_field(*lfs, "size", file.path);
    }
    files.push_back(std::move(file));
  }
  return files;
}

std::optional<std::string> parse_link_next(std::string_view header) {
  // Link: <URL>; rel="next", <URL>; rel="prev"
  while (!header.empty()) {
    const size_t open = header.find('<');
    if (open == std::string_view::npos) return std::nullopt;
    const size_t close = header.find('>', open + 1);
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view url = header.substr(open + 1, close - open - 1);
    const size_t comma = header.find(',', close + 1);
    const std::string_view params =
        header.substr(close + 1, comma == std::string_view::npos ? header.npos : comma - close - 1);
    size_t at = 0;
    while (at < params.size()) {
      const size_t semi = params.find(';', at);
      const std::string_view param = trim(params.substr(at, semi == std::string_view::npos ? params.npos : semi - at));
      if (param == "rel=\"next\"" || param == "rel=next") return std::string(url);
      if (semi == std::string_view::npos) break;
      at = semi + 1;
    }
    if (comma == std::string_view::npos) return std::nullopt;
    header.remove_prefix(comma + 1);
  }
  return std::nullopt;
}

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

std::optional<std::string> sha256_from_etag(std::string_view etag) {
  etag = trim(etag);
  if (etag.starts_with("W/")) etag.remove_prefix(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  if (!is_sha256_hex(etag)) return std::nullopt;
  std::string hex(etag);
  for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return hex;
}

std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

std::optional<ContentRange> parse_content_range(std::string_view value) {
  value = trim(value);
  if (!value.starts_with("bytes ")) return std::nullopt;
  value.remove_prefix(6);
  const size_t dash = value.find('-');
  const size_t slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) return std::nullopt;
  const auto first = parse_decimal(value.substr(0, dash));
  const auto last = parse_decimal(value.substr(dash + 1, slash - dash - 1));
  const auto total = parse_decimal(value.substr(slash + 1));
  if (!first || !last || !total || *first > *last || *last >= *total) return std::nullopt;
  return ContentRange{*first, *last, *total};
}

std::optional<std::pair<std::string, std::string>> parse_header_line(std::string_view line) {
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0 || line.starts_with("HTTP/")) return std::nullopt;
  std::string name(line.substr(0, colon));
  for (char& c : name) {
    if (c == ' ' || c == '\t' || static_cast<unsigned char>(c) < 0x21) return std::nullopt;
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return std::make_pair(std::move(name), std::string(trim(line.substr(colon + 1))));
}

}  // namespace tessera::hub
