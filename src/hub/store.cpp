#include "hub/store.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "hub/replies.h"

namespace tessera::hub {
namespace fs = std::filesystem;
namespace {

nlohmann::json version_json(const RemoteVersion& v) {
  return {{"url", v.url}, {"size", v.size}, {"sha256", v.sha256}, {"commit", v.commit}};
}

template <class T>
T field(const nlohmann::json& doc, const char* key) {
  const auto it = doc.find(key);
  if (it == doc.end()) throw std::runtime_error(fmt::format("the manifest has no '{}'", key));
  // nlohmann converts any number to any number type; a float beyond the type's range would be undefined.
  if constexpr (std::is_integral_v<T>) {
    if (!(std::is_unsigned_v<T> ? it->is_number_unsigned() : it->is_number_integer())) {
      throw std::runtime_error(fmt::format("the manifest's '{}' is not a whole number", key));
    }
  }
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error(fmt::format("the manifest's '{}' has the wrong type", key));
  }
}

RemoteVersion version_from(const nlohmann::json& doc) {
  if (!doc.is_object()) throw std::runtime_error("the manifest is not a JSON object");
  RemoteVersion v{field<std::string>(doc, "url"), field<uint64_t>(doc, "size"), field<std::string>(doc, "sha256"),
                  field<std::string>(doc, "commit")};
  if (!sha256_from_etag(v.sha256) || *sha256_from_etag(v.sha256) != v.sha256)
    throw std::runtime_error("the manifest's sha256 is not 64 lowercase hex digits");
  return v;
}

nlohmann::json parse_json(std::string_view text) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) throw std::runtime_error("the manifest is not valid JSON");
  return doc;
}

std::optional<Manifest> read_manifest(const fs::path& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return std::nullopt;
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0 && text.size() < (1u << 20);) text.append(buf, n);
  std::fclose(f);
  try {
    return manifest_from_json(text);
  } catch (const std::runtime_error&) {
    return std::nullopt;
  }
}

}  // namespace

std::string to_json(const RemoteVersion& version) { return version_json(version).dump(2) + "\n"; }

std::string to_json(const Manifest& manifest) {
  nlohmann::json doc = version_json(manifest.source);
  doc["downloaded_at"] = manifest.downloaded_at;
  return doc.dump(2) + "\n";
}

RemoteVersion remote_version_from_json(std::string_view json) { return version_from(parse_json(json)); }

Manifest manifest_from_json(std::string_view json) {
  const nlohmann::json doc = parse_json(json);
  return Manifest{version_from(doc), field<std::string>(doc, "downloaded_at")};
}

fs::path default_store_root() {
  if (const char* home = std::getenv("TESSERA_HOME"); home && *home) return fs::path(home) / "models";
  if (const char* cache = std::getenv("XDG_CACHE_HOME"); cache && *cache) return fs::path(cache) / "tessera" / "models";
  const char* home = std::getenv("HOME");
  if (!home || !*home) throw std::runtime_error("cannot place the model store: set TESSERA_HOME (HOME is not set)");
  return fs::path(home) / ".cache" / "tessera" / "models";
}

fs::path Store::model_path(const std::string& repo, const std::string& file) const { return root_ / repo / file; }

std::vector<Store::Entry> Store::entries() const {
  std::vector<Entry> out;
  std::error_code ec;
  if (!fs::is_directory(root_, ec)) return out;
  for (auto it = fs::recursive_directory_iterator(root_, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec) || !is_gguf_name(it->path().filename().string())) continue;
    Entry e;
    e.path = it->path();
    e.name = it->path().lexically_relative(root_).generic_string();
    e.size = it->file_size(ec);
    e.manifest = read_manifest(manifest_path(e.path));
    out.push_back(std::move(e));
  }
  if (ec) throw std::runtime_error(fmt::format("cannot read the model store {}: {}", root_.string(), ec.message()));
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return out;
}

std::vector<Store::Entry> Store::find(const ModelRef& ref) const {
  std::vector<Entry> out;
  const std::string prefix = ref.repo + "/";
  for (Entry& e : entries()) {
    if (!e.name.starts_with(prefix)) continue;
    const std::string file = e.name.substr(prefix.size());
    const bool named = !ref.file.empty() ? file == ref.file : ref.quant.empty() || carries_quant_tag(file, ref.quant);
    if (named) out.push_back(std::move(e));
  }
  return out;
}

void Store::remove(const Entry& entry) const {
  for (const fs::path& p :
       {entry.path, manifest_path(entry.path), part_path(entry.path), part_record_path(entry.path)}) {
    std::error_code ec;
    fs::remove(p, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot remove {}: {}", p.string(), ec.message()));
  }
  std::error_code ec;
  for (fs::path dir = entry.path.parent_path(); dir != root_ && dir.string().starts_with(root_.string());
       dir = dir.parent_path()) {
    if (!fs::is_empty(dir, ec) || ec || !fs::remove(dir, ec)) break;
  }
}

ResumePlan plan_resume(const std::optional<RemoteVersion>& recorded, uint64_t part_size, const RemoteVersion& remote) {
  const bool same = recorded && recorded->sha256 == remote.sha256 && recorded->size == remote.size;
  if (!same || part_size > remote.size) return ResumePlan{0, part_size > 0 || recorded.has_value()};
  return ResumePlan{part_size, false};
}

uint64_t write_offset_for_reply(uint64_t requested, long status, const std::optional<std::string>& content_range,
                                uint64_t expected_size) {
  if (status == 200) return 0;
  if (status != 206) throw std::runtime_error(fmt::format("the server answered HTTP {} to a download", status));
  const std::optional<ContentRange> range = content_range ? parse_content_range(*content_range) : std::nullopt;
  if (!range)
    throw std::runtime_error(fmt::format("the server sent part of the file without a valid Content-Range ('{}')",
                                         content_range.value_or("")));
  if (range->first != requested || range->total != expected_size)
    throw std::runtime_error(fmt::format("the server sent bytes {}-{} of {}, not from byte {} of {}", range->first,
                                         range->last, range->total, requested, expected_size));
  return requested;
}

}  // namespace tessera::hub
