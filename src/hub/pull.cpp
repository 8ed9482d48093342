#include "hub/pull.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <optional>
#include <thread>
#include <vector>

#include "gguf/gguf.h"
#include "hub/http.h"
#include "hub/progress.h"
#include "hub/replies.h"
#include "hub/store.h"

namespace tessera::hub {
namespace fs = std::filesystem;
namespace {

constexpr size_t kListingBytes = 16 << 20;
constexpr int kListingPages = 100;

std::string errno_text(int err) { return std::strerror(err); }

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

void fsync_or_throw(int fd, const fs::path& path) {
  if (::fsync(fd) != 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
}

void fsync_dir(const fs::path& dir) {
  const Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY));
  if (fd.get() >= 0) ::fsync(fd.get());
}

void write_all(int fd, const char* data, size_t size, const fs::path& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// Writes `text` to a temporary file beside `path`, syncs it and renames it over `path`.
void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    const Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw std::runtime_error(fmt::format("cannot create {}: {}", tmp.string(), errno_text(errno)));
    try {
      write_all(fd.get(), text.data(), text.size(), tmp);
      fsync_or_throw(fd.get(), tmp);
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("cannot rename {} to {}: {}", tmp.string(), path.string(), errno_text(err)));
  }
}

std::optional<std::string> read_small_file(const fs::path& path) {
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return std::nullopt;
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd.get(), buf, sizeof buf)) > 0 && text.size() < (1u << 20);) text.append(buf, n);
  return text;
}

std::string sha256_of(int fd, const fs::path& path) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("sha256 unavailable");
  std::vector<char> buf(size_t{4} << 20);
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf.data(), buf.size(), at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(fmt::format("cannot read {}: {}", path.string(), errno_text(errno)));
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    at += n;
  }
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// SIGINT and SIGTERM stop the download (the part file stays for a resume) instead of killing the process in
// the middle of a write; the previous handlers come back afterwards.
std::atomic<bool> g_stop_requested{false};
extern "C" void request_stop(int) { g_stop_requested.store(true); }

class StopOnSignal {
 public:
  StopOnSignal() {
    g_stop_requested.store(false);
    struct sigaction action {};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
  ~StopOnSignal() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  bool requested() const { return g_stop_requested.load(); }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

// One line for a reply the Hub gave instead of what was asked. `file` is "" for repository-wide requests.
[[noreturn]] void throw_for_status(const HttpReply& reply, const Options& options, const std::string& repo,
                                   const std::string& file) {
  const auto code_it = reply.headers.find("x-error-code");
  const std::string code = code_it == reply.headers.end() ? "" : code_it->second;
  const std::string what = file.empty() ? repo : repo + "/" + file;
  switch (reply.status) {
    case 401:
      if (options.token.empty())
        throw std::runtime_error(
            fmt::format("{}: the Hub wants a token (HTTP 401{}): the repository is gated or "
                        "private, or does not exist; set HF_TOKEN or pass --token",
                        what, code.empty() ? "" : ", " + code));
      throw std::runtime_error(
          fmt::format("{}: the Hub refused the token (HTTP 401{}); check HF_TOKEN / --token, "
                      "and that the repository exists",
                      what, code.empty() ? "" : ", " + code));
    case 403:
      throw std::runtime_error(
          fmt::format("{}: access denied (HTTP 403{}): the repository is gated; accept its "
                      "terms on the Hub with the account whose token is in HF_TOKEN",
                      what, code.empty() ? "" : ", " + code));
    case 404:
      if (!file.empty() && code != "RepoNotFound" && code != "RevisionNotFound")
        throw std::runtime_error(fmt::format("{} not found in {} on {} (HTTP 404)", file, repo, options.endpoint));
      throw std::runtime_error(fmt::format("repository {} not found on {} (HTTP 404)", repo, options.endpoint));
    default:
      throw std::runtime_error(fmt::format("{}: the Hub answered HTTP {}", what, reply.status));
  }
}

std::vector<RemoteFile> list_repo_files(HttpClient& http, const Options& options, const std::string& repo) {
  std::vector<RemoteFile> files;
  std::string url = fmt::format("{}/api/models/{}/tree/main?recursive=true", options.endpoint, repo);
  for (int page = 0; page < kListingPages; ++page) {
    const HttpReply reply = http.get(url, kListingBytes);
    if (reply.status != 200) throw_for_status(reply, options, repo, "");
    std::vector<RemoteFile> more = parse_tree_listing(reply.body);
    files.insert(files.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    const auto link = reply.headers.find("link");
    const std::optional<std::string> next = link == reply.headers.end() ? std::nullopt : parse_link_next(link->second);
    // The token goes only to the endpoint: a next page elsewhere is not followed.
    if (!next || !next->starts_with(options.endpoint + "/")) return files;
    url = *next;
  }
  throw std::runtime_error(fmt::format("{}: the file listing has more than {} pages", repo, kListingPages));
}

// The version of `file` the Hub serves now: its sha256 and size from the resolve URL's headers (X-Linked-Etag
// and X-Linked-Size when it redirects to the CDN), else from the file listing.
RemoteVersion describe(HttpClient& http, const Options& options, const std::string& repo, const std::string& file,
                       std::optional<std::vector<RemoteFile>>& listing) {
  RemoteVersion v;
  v.url = fmt::format("{}/{}/resolve/main/{}", options.endpoint, repo, escape_url_path(file));
  const HttpReply reply = http.head(v.url);
  if (reply.status < 200 || reply.status >= 400) throw_for_status(reply, options, repo, file);
  const auto header = [&](const char* name) -> std::optional<std::string> {
    const auto it = reply.headers.find(name);
    return it == reply.headers.end() ? std::nullopt : std::optional(it->second);
  };
  const auto sha_in = [&](const char* name) { return header(name) ? sha256_from_etag(*header(name)) : std::nullopt; };
  const auto size_in = [&](const char* name) { return header(name) ? parse_decimal(*header(name)) : std::nullopt; };
  std::optional<std::string> sha = sha_in("x-linked-etag");
  if (!sha) sha = sha_in("etag");
  std::optional<uint64_t> size = size_in("x-linked-size");
  // A 200 is the file itself (kept in git, not redirected to the CDN); a redirect's length is its own body's.
  if (!size && reply.status == 200) size = size_in("content-length");
  v.commit = header("x-repo-commit").value_or("");
  if (!sha || !size) {
    if (!listing) listing = list_repo_files(http, options, repo);
    for (const RemoteFile& f : *listing) {
      if (f.path != file) continue;
      if (!sha && !f.sha256.empty()) sha = f.sha256;
      if (!size) size = f.size;
    }
  }
  if (!sha)
    throw std::runtime_error(
        fmt::format("{}/{}: the Hub gives no sha256 for it (not an LFS file), so it cannot be "
                    "verified; not downloading it",
                    repo, file));
  if (!size) throw std::runtime_error(fmt::format("{}/{}: the Hub gives no size for it", repo, file));
  v.sha256 = *sha;
  v.size = *size;
  return v;
}

fs::path store_root(const Options& options) {
  return options.store_root.empty() ? default_store_root() : options.store_root;
}

bool store_holds(const fs::path& model, const RemoteVersion& remote) {
  std::error_code ec;
  if (!fs::is_regular_file(model, ec) || fs::file_size(model, ec) != remote.size) return false;
  const std::optional<std::string> text = read_small_file(Store::manifest_path(model));
  if (!text) return false;
  try {
    return manifest_from_json(*text).source.sha256 == remote.sha256;
  } catch (const std::runtime_error&) {
    return false;
  }
}

void discard_part(const fs::path& model) {
  ::unlink(Store::part_path(model).c_str());
  ::unlink(Store::part_record_path(model).c_str());
}

// Downloads `remote` into the part file beside `model`, resuming what an earlier run left, verifies and
// validates it, then renames it to `model`.
void download(HttpClient& http, const Options& options, const RemoteVersion& remote, const fs::path& model,
              const std::string& repo, const std::string& file) {
  const std::string name = repo + "/" + file;
  std::error_code ec;
  fs::create_directories(model.parent_path(), ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create {}: {}", model.parent_path().string(), ec.message()));
  const fs::path part = Store::part_path(model);
  const fs::path record = Store::part_record_path(model);
  const Fd fd(::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw std::runtime_error(fmt::format("cannot create {}: {}", part.string(), errno_text(errno)));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0)
    throw std::runtime_error(fmt::format("another tessera is downloading {} (into {})", name, part.string()));

  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw std::runtime_error(fmt::format("cannot stat {}: {}", part.string(), errno_text(errno)));
  std::optional<RemoteVersion> recorded;
  if (const std::optional<std::string> text = read_small_file(record)) {
    try {
      recorded = remote_version_from_json(*text);
    } catch (const std::runtime_error&) {
    }
  }
  const ResumePlan plan = plan_resume(recorded, static_cast<uint64_t>(st.st_size), remote);
  if (plan.discard_part && ::ftruncate(fd.get(), 0) != 0)
    throw std::runtime_error(fmt::format("cannot truncate {}: {}", part.string(), errno_text(errno)));
  if (!recorded || plan.discard_part) write_file_atomically(record, to_json(remote));

  uint64_t position = plan.offset;
  if (!options.quiet) {
    if (position > 0)
      std::fprintf(stderr, "resuming %s at %s of %s\n", name.c_str(), format_bytes(position).c_str(),
                   format_bytes(remote.size).c_str());
    else
      std::fprintf(stderr, "downloading %s (%s)\n", name.c_str(), format_bytes(remote.size).c_str());
  }
  Progress progress(name, remote.size, position, options.quiet);
  const StopOnSignal stop;
  DownloadHandlers handlers;
  uint64_t requested = 0;
  handlers.on_body_start = [&](long status, const Headers& headers) {
    const auto range = headers.find("content-range");
    position = write_offset_for_reply(
        requested, status, range == headers.end() ? std::nullopt : std::optional(range->second), remote.size);
    if (position == 0 && ::ftruncate(fd.get(), 0) != 0)
      throw std::runtime_error(fmt::format("cannot truncate {}: {}", part.string(), errno_text(errno)));
    if (::lseek(fd.get(), static_cast<off_t>(position), SEEK_SET) < 0)
      throw std::runtime_error(fmt::format("cannot seek in {}: {}", part.string(), errno_text(errno)));
  };
  handlers.on_data = [&](const char* data, size_t size) {
    if (size > remote.size - position)
      throw std::runtime_error(
          fmt::format("{}: the server sent more than the {} bytes the Hub announced", name, remote.size));
    write_all(fd.get(), data, size, part);
    position += size;
    progress.update(position);
  };
  handlers.keep_going = [&] { return !stop.requested(); };

  for (int attempt = 1; position < remote.size; ++attempt) {
    requested = position;
    std::string failure;
    try {
      const HttpReply reply = http.download(remote.url, requested, handlers);
      if (reply.status < 200 || reply.status >= 300) throw_for_status(reply, options, repo, file);
      if (position < remote.size)
        failure = fmt::format("the server ended the file after {} of {} bytes", position, remote.size);
    } catch (const NetworkError& e) {
      if (stop.requested())
        throw std::runtime_error(
            fmt::format("interrupted: kept {} of {} of {} in {}; run the same command again to "
                        "resume",
                        format_bytes(position), format_bytes(remote.size), name, part.string()));
      if (!e.transient()) throw;
      failure = e.what();
    }
    if (failure.empty()) continue;
    if (attempt >= options.attempts)
      throw std::runtime_error(
          fmt::format("download of {} stopped at {} of {} bytes ({}); the part is kept in {}: "
                      "run the same command again to resume",
                      name, position, remote.size, failure, part.string()));
    const int wait_ms = 500 << (attempt - 1);
    if (!options.quiet)
      std::fprintf(stderr, "%s: %s; resuming at byte %llu in %.1fs (attempt %d of %d)\n", name.c_str(), failure.c_str(),
                   static_cast<unsigned long long>(position), wait_ms / 1000.0, attempt + 1, options.attempts);
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }
  progress.finish(position);
  fsync_or_throw(fd.get(), part);

  const std::string sha = sha256_of(fd.get(), part);
  if (sha != remote.sha256) {
    discard_part(model);
    throw std::runtime_error(
        fmt::format("checksum mismatch for {}: the Hub says sha256 {}, the download has {}; "
                    "deleted the partial file {}",
                    name, remote.sha256, sha, part.string()));
  }
  try {
    gguf::File::open(part.string());
  } catch (const std::runtime_error& e) {
    discard_part(model);
    throw std::runtime_error(
        fmt::format("{} is not a GGUF file Tessera can read ({}); deleted the download", name, e.what()));
  }
  write_file_atomically(Store::manifest_path(model), to_json(Manifest{remote, utc_now()}));
  if (::rename(part.c_str(), model.c_str()) != 0)
    throw std::runtime_error(
        fmt::format("cannot rename {} to {}: {}", part.string(), model.string(), errno_text(errno)));
  ::unlink(record.c_str());
  fsync_dir(model.parent_path());
}

}  // namespace

Options Options::from_environment(const std::string& token) {
  Options o;
  if (const char* endpoint = std::getenv("HF_ENDPOINT"); endpoint && *endpoint) o.endpoint = endpoint;
  while (o.endpoint.ends_with('/')) o.endpoint.pop_back();
  o.token = token;
  if (const char* env_token = std::getenv("HF_TOKEN"); o.token.empty() && env_token) o.token = env_token;
  return o;
}

PullResult pull(const ModelRef& ref, const Options& options) {
  HttpClient http(options.token);
  const Store store(store_root(options));
  std::optional<std::vector<RemoteFile>> listing;
  std::string file = ref.file;
  if (file.empty()) {
    listing = list_repo_files(http, options, ref.repo);
    std::vector<std::string> paths;
    for (const RemoteFile& f : *listing) paths.push_back(f.path);
    file = pick_gguf_file(ref, paths);
  }
  const RemoteVersion remote = describe(http, options, ref.repo, file, listing);
  PullResult result{store.model_path(ref.repo, file), ref.repo + "/" + file, false};
  if (store_holds(result.path, remote)) return result;
  download(http, options, remote, result.path, ref.repo, file);
  result.downloaded = true;
  return result;
}

std::string resolve_model_path(const std::string& model_arg, const Options& options) {
  std::error_code ec;
  if (fs::exists(model_arg, ec)) return model_arg;
  const std::optional<ModelRef> ref = parse_reference(model_arg);
  if (!ref) return model_arg;
  if (!ref->file.empty() || !ref->quant.empty()) {
    const std::vector<Store::Entry> stored = Store(store_root(options)).find(*ref);
    if (stored.size() == 1) return stored.front().path.string();
  }
  if (!options.quiet)
    std::fprintf(stderr, "%s is not in the store (%s); pulling it\n", model_arg.c_str(), store_root(options).c_str());
  return pull(*ref, options).path.string();
}

}  // namespace tessera::hub
