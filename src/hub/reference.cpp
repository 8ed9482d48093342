#include "hub/reference.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <regex>

namespace tessera::hub {
namespace {

constexpr std::string_view kScheme = "hf://";

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// The Hub allows letters, digits, '-', '_' and '.' in owner and repository names, at most 96 characters, and
// no leading or trailing separator; refusing the rest keeps every name a safe folder name in the store.
bool is_valid_name_part(std::string_view s) {
  if (s.empty() || s.size() > 96) return false;
  for (char c : s)
    if (!is_word_char(c) && c != '-' && c != '_' && c != '.') return false;
  if (s.front() == '.' || s.front() == '-' || s.back() == '.' || s.back() == '-') return false;
  return s.find("..") == std::string_view::npos;
}

bool is_valid_quant_tag(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return is_word_char(c) || c == '_'; });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view base_name(std::string_view path) {
  const size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// "OWNER/NAME" followed by "/FILE" or ":QUANT" or nothing.
ModelRef split_reference(std::string_view rest, std::string_view original) {
  ModelRef ref;
  const size_t first_slash = rest.find('/');
  if (first_slash == std::string_view::npos)
    throw ReferenceError(
        fmt::format("'{}' is not a Hub reference: expected OWNER/NAME/FILE.gguf or OWNER/NAME:QUANT", original));
  const size_t second_slash = rest.find('/', first_slash + 1);
  std::string_view repo = rest.substr(0, second_slash);
  if (second_slash != std::string_view::npos) {
    ref.file = std::string(rest.substr(second_slash + 1));
  } else if (const size_t colon = repo.find(':'); colon != std::string_view::npos) {
    ref.quant = std::string(repo.substr(colon + 1));
    repo = repo.substr(0, colon);
    if (!is_valid_quant_tag(ref.quant))
      throw ReferenceError(
          fmt::format("'{}': '{}' is not a quant tag (letters, digits and '_', such as Q4_K_M)", original, ref.quant));
  }
  ref.repo = std::string(repo);
  if (!is_valid_repo_id(ref.repo))
    throw ReferenceError(
        fmt::format("'{}': '{}' is not a valid Hub repository name (OWNER/NAME of letters, digits, "
                    "'.', '_', '-')",
                    original, ref.repo));
  if (second_slash != std::string_view::npos) {
    if (!is_valid_repo_file(ref.file))
      throw ReferenceError(fmt::format("'{}': '{}' is not a valid file path in a repository", original, ref.file));
    if (!is_gguf_name(ref.file))
      throw ReferenceError(fmt::format("'{}': '{}' is not a .gguf file", original, ref.file));
  }
  return ref;
}

}  // namespace

std::string ModelRef::text() const {
  if (!file.empty()) return repo + "/" + file;
  if (!quant.empty()) return repo + ":" + quant;
  return repo;
}

bool is_valid_repo_id(std::string_view repo) {
  const size_t slash = repo.find('/');
  if (slash == std::string_view::npos) return false;
  return is_valid_name_part(repo.substr(0, slash)) && is_valid_name_part(repo.substr(slash + 1));
}

bool is_valid_repo_file(std::string_view path) {
  if (path.empty() || path.size() > 1024) return false;
  size_t start = 0;
  while (true) {
    const size_t slash = path.find('/', start);
    const std::string_view part = path.substr(start, slash == std::string_view::npos ? path.npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool is_gguf_name(std::string_view path) { return path.size() > 5 && lower(path.substr(path.size() - 5)) == ".gguf"; }

std::optional<ModelRef> parse_reference(std::string_view text) {
  if (text.starts_with(kScheme)) return split_reference(text.substr(kScheme.size()), text);
  // Without the scheme only OWNER/NAME:QUANT is a reference; everything else is a local path.
  const size_t slash = text.find('/');
  const size_t colon = text.find(':');
  if (slash == std::string_view::npos || colon == std::string_view::npos || colon < slash) return std::nullopt;
  if (text.find('/', slash + 1) != std::string_view::npos) return std::nullopt;
  const std::string_view repo = text.substr(0, colon);
  if (!is_valid_repo_id(repo) || !is_valid_quant_tag(text.substr(colon + 1))) return std::nullopt;
  return ModelRef{std::string(repo), "", std::string(text.substr(colon + 1))};
}

ModelRef parse_store_name(std::string_view text) {
  if (std::optional<ModelRef> ref = parse_reference(text)) return *ref;
  return split_reference(text, text);
}

bool carries_quant_tag(std::string_view path, std::string_view tag) {
  if (tag.empty()) return false;
  const std::string name = lower(base_name(path));
  const std::string needle = lower(tag);
  for (size_t at = name.find(needle); at != std::string::npos; at = name.find(needle, at + 1)) {
    const size_t end = at + needle.size();
    const bool starts_token = at == 0 || !is_word_char(name[at - 1]);
    const bool ends_token = end == name.size() || (!is_word_char(name[end]) && name[end] != '_');
    if (starts_token && ends_token) return true;
  }
  return false;
}

std::string pick_gguf_file(const ModelRef& ref, const std::vector<std::string>& paths) {
  std::vector<std::string> ggufs, matches;
  for (const std::string& p : paths) {
    if (!is_gguf_name(p)) continue;
    ggufs.push_back(p);
    if (ref.quant.empty() || carries_quant_tag(p, ref.quant)) matches.push_back(p);
  }
  std::sort(ggufs.begin(), ggufs.end());
  std::sort(matches.begin(), matches.end());
  if (ggufs.empty()) throw std::runtime_error(fmt::format("{} has no .gguf files", ref.repo));
  if (matches.size() == 1) return matches.front();
  // llama.cpp's gguf-split names its parts NAME-00001-of-00003.gguf; Tessera maps one file.
  static const std::regex kSplitPart(R"(-\d{5}-of-\d{5}\.gguf$)", std::regex::icase);
  if (!matches.empty() && std::all_of(matches.begin(), matches.end(),
                                      [](const std::string& p) { return std::regex_search(p, kSplitPart); }))
    throw std::runtime_error(
        fmt::format("{} is split into {} files ({}, ...); Tessera reads single-file GGUF models "
                    "only (llama.cpp's gguf-split --merge joins them)",
                    ref.text(), matches.size(), matches.front()));
  if (matches.empty())
    throw std::runtime_error(fmt::format("no .gguf file in {} carries the tag '{}'; it has: {}", ref.repo, ref.quant,
                                         fmt::join(ggufs, ", ")));
  const std::string what = ref.quant.empty() ? "a quant tag (OWNER/NAME:QUANT) or a file" : "a file";
  throw std::runtime_error(fmt::format("{} matches {} files, name {} (hf://{}/FILE.gguf): {}", ref.text(),
                                       matches.size(), what, ref.repo, fmt::join(matches, ", ")));
}

}  // namespace tessera::hub
