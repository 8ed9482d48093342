// The local model store: ROOT/OWNER/NAME/FILE.gguf, each with a JSON manifest FILE.gguf.json saying where it
// came from. A download in progress is FILE.gguf.part with FILE.gguf.part.json naming the remote version its
// bytes belong to, so a later run resumes only a download of the same file. Only verified, complete files ever
// carry the final name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hub/reference.h"

namespace tessera::hub {

// One file of one revision on the Hub.
struct RemoteVersion {
  std::string url;     // the resolve URL it is downloaded from
  uint64_t size = 0;   // bytes
  std::string sha256;  // lowercase hex
  std::string commit;  // X-Repo-Commit, "" if the Hub did not say
};

struct Manifest {
  RemoteVersion source;
  std::string downloaded_at;  // UTC, ISO 8601 ("2026-12-05T10:00:00Z")
};

std::string to_json(const Manifest& manifest);
std::string to_json(const RemoteVersion& version);
// Throw std::runtime_error when the text is not a manifest (missing or mistyped field, bad sha256).
Manifest manifest_from_json(std::string_view json);
RemoteVersion remote_version_from_json(std::string_view json);

// $TESSERA_HOME/models, else $XDG_CACHE_HOME/tessera/models, else ~/.cache/tessera/models.
std::filesystem::path default_store_root();

class Store {
 public:
  explicit Store(std::filesystem::path root) : root_(std::move(root)) {}
  const std::filesystem::path& root() const { return root_; }

  std::filesystem::path model_path(const std::string& repo, const std::string& file) const;
  static std::filesystem::path manifest_path(const std::filesystem::path& model) { return suffixed(model, ".json"); }
  static std::filesystem::path part_path(const std::filesystem::path& model) { return suffixed(model, ".part"); }
  static std::filesystem::path part_record_path(const std::filesystem::path& model) {
    return suffixed(model, ".part.json");
  }

  struct Entry {
    std::string name;  // OWNER/NAME/FILE.gguf
    std::filesystem::path path;
    uint64_t size = 0;
    std::optional<Manifest> manifest;  // nullopt when missing or unreadable
  };
  // Every model in the store, by name. Partial downloads are not models.
  std::vector<Entry> entries() const;
  // The stored models `ref` names: its file, or the files of its repository that carry its quant tag (all of
  // the repository's files when it has neither).
  std::vector<Entry> find(const ModelRef& ref) const;
  // Deletes the model, its manifest and any partial download of it, then the folders left empty.
  void remove(const Entry& entry) const;

 private:
  static std::filesystem::path suffixed(const std::filesystem::path& p, const char* suffix) {
    return std::filesystem::path(p.string() + suffix);
  }
  std::filesystem::path root_;
};

// Where a download starts, given the partial file found on disk and the record saved with it.
struct ResumePlan {
  uint64_t offset = 0;        // first byte to request
  bool discard_part = false;  // the part holds another version's bytes (or too many): start over
};
ResumePlan plan_resume(const std::optional<RemoteVersion>& recorded, uint64_t part_size, const RemoteVersion& remote);

// What the reply to a request for bytes `requested`.. means for the partial file: where to write its body.
// 206 must start at `requested`; 200 is the whole file (the server ignored the Range), so writing restarts at 0.
// Throws std::runtime_error for a reply that fits neither, naming it.
uint64_t write_offset_for_reply(uint64_t requested, long status, const std::optional<std::string>& content_range,
                                uint64_t expected_size);

}  // namespace tessera::hub
