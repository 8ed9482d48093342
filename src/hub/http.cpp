#include "hub/http.h"

#include <curl/curl.h>
#include <fmt/format.h>

#include <exception>
#include <mutex>

#include "hub/replies.h"

namespace tessera::hub {
namespace {

constexpr size_t kErrorBodyBytes = 4096;

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("libcurl failed to initialise");
  });
}

// What one request collects through libcurl's callbacks. Exceptions cannot cross libcurl's C frames, so a
// handler's exception is kept here and rethrown once curl_easy_perform returns.
struct Exchange {
  CURL* curl = nullptr;
  HttpReply reply;
  size_t max_body = 0;
  bool body_too_long = false;
  const DownloadHandlers* handlers = nullptr;
  bool body_started = false;
  bool stopped = false;
  std::exception_ptr error;

  bool is_success() const { return reply.status >= 200 && reply.status < 300; }
};

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* x = static_cast<Exchange*>(user);
  const std::string_view line(data, size * count);
  // Each response of a redirect chain starts with its status line; only the last one's headers are kept.
  if (line.starts_with("HTTP/")) {
    x->reply.headers.clear();
  } else if (auto header = parse_header_line(line)) {
    x->reply.headers[header->first] = std::move(header->second);
  }
  return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* x = static_cast<Exchange*>(user);
  const size_t n = size * count;
  if (!x->body_started) {
    x->body_started = true;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &x->reply.status);
    if (x->handlers && x->is_success()) {
      try {
        x->handlers->on_body_start(x->reply.status, x->reply.headers);
      } catch (...) {
        x->error = std::current_exception();
        return 0;
      }
    }
  }
  if (x->handlers && x->is_success()) {
    try {
      x->handlers->on_data(data, n);
    } catch (...) {
      x->error = std::current_exception();
      return 0;
    }
    return n;
  }
  const size_t limit = x->handlers ? kErrorBodyBytes : x->max_body;
  if (x->reply.body.size() + n > limit) {
    if (!x->handlers) {
      x->body_too_long = true;
      return 0;
    }
    x->reply.body.append(data, limit - x->reply.body.size());
    return n;
  }
  x->reply.body.append(data, n);
  return n;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* x = static_cast<Exchange*>(user);
  if (x->handlers && x->handlers->keep_going && !x->handlers->keep_going()) {
    x->stopped = true;
    return 1;
  }
  return 0;
}

bool is_transient(CURLcode code) {
  switch (code) {
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

std::string host_of(const std::string& url) {
  const size_t start = url.find("://");
  const size_t from = start == std::string::npos ? 0 : start + 3;
  return url.substr(from, url.find('/', from) - from);
}

}  // namespace

struct HttpClient::Impl {
  CURL* curl = nullptr;
  curl_slist* headers = nullptr;

  HttpReply perform(const std::string& url, Exchange& x, bool follow, bool no_body, uint64_t from) {
    curl_easy_reset(curl);
    x.curl = curl;
    char error_text[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "tessera/0.1.0");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
    // A transfer that moves no byte for a minute has stalled; it is dropped and, for downloads, resumed.
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl, CURLOPT_NOBODY, no_body ? 1L : 0L);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &x);
    // CURLOPT_RANGE rather than RESUME_FROM: a server that ignores the range and sends the whole file (200) is
    // handled by the caller instead of failing the transfer.
    const std::string range = fmt::format("{}-", from);
    if (from > 0) curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
    const CURLcode code = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &x.reply.status);
    if (x.error) std::rethrow_exception(x.error);
    if (x.stopped) throw NetworkError("stopped", false);
    if (x.body_too_long)
      throw NetworkError(fmt::format("{}: the reply is longer than {} bytes", url, x.max_body), false);
    if (code != CURLE_OK) {
      const std::string detail = error_text[0] ? error_text : curl_easy_strerror(code);
      if (code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_PROXY)
        throw NetworkError(
            fmt::format("cannot reach {}: {} (no network? HF_ENDPOINT may name a mirror)", host_of(url), detail),
            false);
      throw NetworkError(fmt::format("{}: {}", host_of(url), detail), is_transient(code));
    }
    return std::move(x.reply);
  }
};

HttpClient::HttpClient(std::string token) : impl_(std::make_unique<Impl>()) {
  init_curl_once();
  impl_->curl = curl_easy_init();
  if (!impl_->curl) throw std::runtime_error("libcurl could not make a handle");
  if (!token.empty()) {
    impl_->headers = curl_slist_append(nullptr, ("Authorization: Bearer " + token).c_str());
    if (!impl_->headers) throw std::bad_alloc();
  }
}

HttpClient::~HttpClient() {
  curl_slist_free_all(impl_->headers);
  curl_easy_cleanup(impl_->curl);
}

HttpReply HttpClient::head(const std::string& url) {
  Exchange x;
  return impl_->perform(url, x, false, true, 0);
}

HttpReply HttpClient::get(const std::string& url, size_t max_body_bytes) {
  Exchange x;
  x.max_body = max_body_bytes;
  return impl_->perform(url, x, true, false, 0);
}

HttpReply HttpClient::download(const std::string& url, uint64_t from, const DownloadHandlers& handlers) {
  Exchange x;
  x.handlers = &handlers;
  return impl_->perform(url, x, true, false, from);
}

std::string escape_url_path(const std::string& path) {
  init_curl_once();
  std::string out;
  size_t start = 0;
  while (true) {
    const size_t slash = path.find('/', start);
    const std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    char* escaped = curl_easy_escape(nullptr, part.c_str(), static_cast<int>(part.size()));
    if (!escaped) throw std::bad_alloc();
    out += escaped;
    curl_free(escaped);
    if (slash == std::string::npos) return out;
    out += '/';
    start = slash + 1;
  }
}

}  // namespace tessera::hub
