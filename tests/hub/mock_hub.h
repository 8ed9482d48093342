// A stand-in for the Hugging Face Hub on 127.0.0.1, for the hub's tests: the endpoints Tessera uses, with the
// Hub's reply shapes (the tree listing JSON with lfs.oid, a resolve URL that redirects to a CDN host with
// X-Linked-Etag / X-Linked-Size / X-Repo-Commit, 401 or 403 for gated repositories, 404 with X-Error-Code) and a CDN
// that honours Range requests and can be told to drop connections. Every request is logged for assertions.
#pragma once

#include <httplib.h>
#include <openssl/evp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace tessera::test {

inline std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  static const char* const kDigits = "0123456789abcdef";
  for (unsigned int i = 0; i < length; ++i) {
    hex += kDigits[digest[i] >> 4];
    hex += kDigits[digest[i] & 15];
  }
  return hex;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class MockHub {
 public:
  struct File {
    std::string bytes;
    std::string advertised_sha256;  // what the Hub says; "" for the true sha256 of `bytes`
  };
  struct Request {
    std::string method, path, range, authorization;
    size_t body_bytes = 0;  // of a CDN reply, what was actually sent
  };
  static constexpr const char* kToken = "hf_mock_token";
  static constexpr const char* kTokenWithoutAccess = "hf_mock_token_without_access";
  static constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";

  MockHub() {
    server_.Get(R"(/api/models/([^/]+/[^/]+)/tree/main)", [this](const httplib::Request& req, httplib::Response& res) {
      log(req);
      const Repo* repo = find_repo(req.matches[1], req, res);
      if (!repo) return;
      nlohmann::json listing = nlohmann::json::array();
      listing.push_back({{"type", "file"}, {"oid", "5f4b0a3e"}, {"size", 31}, {"path", ".gitattributes"}});
      for (const auto& [path, file] : repo->files) {
        if (path.find('/') != std::string::npos)
          listing.push_back(
              {{"type", "directory"}, {"oid", "d1"}, {"size", 0}, {"path", path.substr(0, path.find('/'))}});
        listing.push_back({{"type", "file"},
                           {"oid", "9c2a"},
                           {"size", file.bytes.size()},
                           {"path", path},
                           {"lfs", {{"oid", advertised(file)}, {"size", file.bytes.size()}, {"pointerSize", 134}}}});
      }
      res.set_content(listing.dump(), "application/json");
    });
    server_.Get(R"(/([^/]+/[^/]+)/resolve/main/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      log(req);
      const Repo* repo = find_repo(req.matches[1], req, res);
      if (!repo) return;
      const auto file = repo->files.find(req.matches[2]);
      if (file == repo->files.end()) {
        res.status = 404;
        res.set_header("X-Error-Code", "EntryNotFound");
        return;
      }
      // The CDN is another host name for the same server, so the client must not send it the token.
      res.set_redirect("http://localhost:" + std::to_string(port_) + "/cdn/" + std::string(req.matches[1]) + "/" +
                           std::string(req.matches[2]),
                       302);
      std::string quoted_sha = "\"";
      quoted_sha += advertised(file->second);
      quoted_sha += '"';
      res.set_header("X-Linked-Etag", quoted_sha);
      res.set_header("X-Linked-Size", std::to_string(file->second.bytes.size()));
      res.set_header("X-Repo-Commit", kCommit);
      res.set_header("ETag", "\"9c2a\"");
    });
    server_.Get(R"(/cdn/([^/]+/[^/]+)/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const size_t index = log(req);
      const auto repo = repos_.find(req.matches[1]);
      const auto file = repo == repos_.end() ? nullptr : &repo->second.files.at(req.matches[2]);
      if (!file) {
        res.status = 404;
        return;
      }
      res.set_content_provider(file->bytes.size(), "application/octet-stream",
                               [this, file, index](size_t offset, size_t length, httplib::DataSink& sink) {
                                 return serve(file->bytes, offset, length, sink, index);
                               });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  MockHub(const MockHub&) = delete;
  MockHub& operator=(const MockHub&) = delete;
  ~MockHub() {
    release_stall();
    server_.stop();
    thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Add repositories before the first request.
  void add_repo(const std::string& id, std::map<std::string, File> files, bool gated = false) {
    repos_[id] = Repo{std::move(files), gated};
  }

  // Every CDN reply stops after `bytes` of body and drops the connection; `replies` limits how many (-1: all).
  void cut_replies_after(size_t bytes, int replies = -1) {
    std::lock_guard lock(mutex_);
    cut_bytes_ = bytes;
    cuts_left_ = replies;
  }
  // The next CDN reply sends `bytes` and then waits (until release_stall or 20 s) before dropping the connection.
  void stall_after(size_t bytes) {
    std::lock_guard lock(mutex_);
    stall_bytes_ = bytes;
    stalled_ = false;
    released_ = false;
  }
  bool wait_until_stalled(std::chrono::seconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [this] { return stalled_; });
  }
  void release_stall() {
    std::lock_guard lock(mutex_);
    released_ = true;
    changed_.notify_all();
  }

  std::vector<Request> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::vector<Request> requests_to(const std::string& prefix, const std::string& method = "GET") const {
    std::vector<Request> out;
    for (const Request& r : requests())
      if (r.path.starts_with(prefix) && r.method == method) out.push_back(r);
    return out;
  }
  void clear_requests() {
    std::lock_guard lock(mutex_);
    requests_.clear();
  }

 private:
  struct Repo {
    std::map<std::string, File> files;
    bool gated = false;
  };

  static std::string advertised(const File& file) {
    return file.advertised_sha256.empty() ? sha256_hex(file.bytes) : file.advertised_sha256;
  }

  size_t log(const httplib::Request& req) {
    std::lock_guard lock(mutex_);
    requests_.push_back({req.method, req.path, req.get_header_value("Range"), req.get_header_value("Authorization")});
    return requests_.size() - 1;
  }

  // The Hub answers 404 RepoNotFound for a repository it does not have, and 401 GatedRepo for a gated one
  // asked without a token with access.
  const Repo* find_repo(const std::string& id, const httplib::Request& req, httplib::Response& res) const {
    const auto it = repos_.find(id);
    if (it == repos_.end()) {
      res.status = 404;
      res.set_header("X-Error-Code", "RepoNotFound");
      return nullptr;
    }
    const std::string authorization = req.get_header_value("Authorization");
    if (it->second.gated && authorization != std::string("Bearer ") + kToken) {
      // A valid token whose account has not accepted the repository's terms gets 403; no token or an unknown
      // one gets 401.
      res.status = authorization == std::string("Bearer ") + kTokenWithoutAccess ? 403 : 401;
      res.set_header("X-Error-Code", "GatedRepo");
      return nullptr;
    }
    return &it->second;
  }

  bool serve(const std::string& bytes, size_t offset, size_t length, httplib::DataSink& sink, size_t index) {
    size_t limit = length;
    bool stall = false;
    {
      std::lock_guard lock(mutex_);
      if (cut_bytes_ > 0 && cuts_left_ != 0) {
        limit = std::min(length, cut_bytes_);
        if (cuts_left_ > 0) --cuts_left_;
      }
      if (stall_bytes_ > 0) {
        limit = std::min(length, stall_bytes_);
        stall_bytes_ = 0;
        stall = true;
      }
    }
    sink.write(bytes.data() + offset, limit);
    std::unique_lock lock(mutex_);
    requests_[index].body_bytes = limit;
    if (stall) {
      stalled_ = true;
      changed_.notify_all();
      changed_.wait_for(lock, std::chrono::seconds(20), [this] { return released_; });
    }
    return limit == length;
  }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::map<std::string, Repo> repos_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Request> requests_;
  size_t cut_bytes_ = 0;
  int cuts_left_ = 0;
  size_t stall_bytes_ = 0;
  bool stalled_ = false, released_ = false;
};

}  // namespace tessera::test
