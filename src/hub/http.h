// HTTP(S) through libcurl, as the Hub needs it: HEAD without following redirects (to read the Hub's own
// headers), small GETs, and a download that hands its body to the caller as it arrives. The token goes out as a
// Bearer Authorization header, which libcurl sends to the Hub's host only, never to the CDN it redirects to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace tessera::hub {

using Headers = std::map<std::string, std::string>;  // names lowercased; the last of a repeated name wins

// The transfer failed below HTTP: no network, refused, reset, timed out. `transient` when trying again may
// work (a connection dropped mid-file, a stall) rather than when nothing answers at all.
class NetworkError : public std::runtime_error {
 public:
  NetworkError(const std::string& what, bool transient) : std::runtime_error(what), transient_(transient) {}
  bool transient() const { return transient_; }

 private:
  bool transient_;
};

struct HttpReply {
  long status = 0;
  Headers headers;   // of the final response
  std::string body;  // at most the limit the request gave
};

struct DownloadHandlers {
  // Called once with a 2xx reply's status and headers before its first body byte. May throw to stop.
  std::function<void(long status, const Headers& headers)> on_body_start;
  // Each block of the body of a 2xx reply. May throw (e.g. a failed write) to stop.
  std::function<void(const char* data, size_t size)> on_data;
  // Called at least once a second; returning false stops the transfer (NetworkError, not transient).
  std::function<bool()> keep_going;
};

class HttpClient {
 public:
  explicit HttpClient(std::string token);
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;
  ~HttpClient();

  HttpReply head(const std::string& url);                        // does not follow redirects
  HttpReply get(const std::string& url, size_t max_body_bytes);  // follows redirects; a longer body is an error
  // GETs `url` (following redirects) from byte `from` on (a Range request when from > 0). The body of a reply
  // that is not 2xx is kept, at most 4 KiB, in the returned reply; that of a 2xx reply goes to the handlers.
  HttpReply download(const std::string& url, uint64_t from, const DownloadHandlers& handlers);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `path` with each '/'-separated part percent-encoded for a URL.
std::string escape_url_path(const std::string& path);

}  // namespace tessera::hub
