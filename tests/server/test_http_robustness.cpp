// A real server::Server on 127.0.0.1 serving the trained stories260K model, sent raw bytes that are not the HTTP a
// client should send: bad request lines, oversized headers, lying or garbage Content-Lengths, broken chunked
// encodings, bodies over the limit, unknown methods, requests cut off, pipelined requests and deeply nested JSON.
// Each must get a 4xx (a closed connection where the client cut the request off), and the server must still answer
// /health and give the same greedy completion after each test. It runs under ASan+UBSan in scripts/test.sh; the
// same faults through Node are faults.test.mjs's.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "common/fixtures.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

namespace tessera::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr size_t kMaxBody = 64 * 1024;  // small, so a body over it is cheap to send
constexpr int kSocketTimeoutSeconds = 10;

// How many whole responses (a head, then a body of its Content-Length) `data` starts with.
size_t whole_responses(const std::string& data) {
  size_t count = 0, at = 0;
  for (;;) {
    const size_t head_end = data.find("\r\n\r\n", at);
    if (head_end == std::string::npos) return count;
    const std::string head = data.substr(at, head_end - at);
    size_t length = 0;
    if (const size_t field = head.find("Content-Length: "); field != std::string::npos) {
      length = std::stoul(head.substr(field + 16));
    }
    if (data.size() < head_end + 4 + length) return count;
    ++count;
    at = head_end + 4 + length;
  }
}

// One connection to the server with bounded reads and writes.
class Connection {
 public:
  explicit Connection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    EXPECT_GE(fd_, 0) << std::strerror(errno);
    const timeval timeout{kSocketTimeoutSeconds, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address), 0) << std::strerror(errno);
  }
  ~Connection() { ::close(fd_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends what it can: the server may close before it has all (after a 413, say). Returns the bytes sent.
  size_t send(std::string_view data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    return sent;
  }
  void end() { ::shutdown(fd_, SHUT_WR); }
  // Reads until `responses` whole responses have come, the server closes, or the socket times out.
  std::string read(size_t responses) {
    std::string out;
    char buffer[16384];
    while (whole_responses(out) < responses) {
      const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fd_;
};

// Sends the bytes and returns what the server answers: `responses` whole responses, or less where it closes first.
// `half_close` closes the sending side after the bytes, for requests the server would otherwise wait to see the
// rest of (until its read timeout); it may then see the client as gone and answer nothing. (Not `exchange`: ADL
// would pick std::exchange.)
std::string talk(int port, std::string_view request, bool half_close = false, size_t responses = 1) {
  Connection c(port);
  c.send(request);
  if (half_close) c.end();
  return c.read(responses);
}

struct Reply {
  int status = 0;
  json body;
};

// The statuses of every response in `answer` (pipelined responses follow each other).
std::vector<int> statuses(const std::string& answer) {
  static const std::regex status_line(R"(HTTP/1\.1 (\d{3}) )");
  std::vector<int> out;
  for (auto it = std::sregex_iterator(answer.begin(), answer.end(), status_line); it != std::sregex_iterator(); ++it) {
    out.push_back(std::stoi((*it)[1]));
  }
  return out;
}

// The answer to a request the server cannot serve: one 4xx in OpenAI's error shape, or, where `may_close`, nothing
// (cpp-httplib 0.11 answers nothing to a client that has closed its sending side: it sees it as gone).
void expect_refused(const std::string& answer, const std::string& what, bool may_close = false) {
  SCOPED_TRACE(what);
  if (answer.empty() && may_close) return;
  const std::vector<int> s = statuses(answer);
  ASSERT_FALSE(s.empty()) << answer.substr(0, 200);
  EXPECT_EQ(s.size(), 1u) << answer.substr(0, 400);
  EXPECT_GE(s[0], 400) << answer.substr(0, 200);
  EXPECT_LT(s[0], 500) << answer.substr(0, 200);
  const size_t body = answer.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  const json parsed = json::parse(answer.substr(body + 4), nullptr, false);
  ASSERT_TRUE(parsed.is_object()) << answer.substr(0, 400);
  EXPECT_TRUE(parsed["error"]["message"].is_string()) << answer.substr(0, 400);
}

std::string post(const std::string& path, const std::string& body, const std::string& extra_headers = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

const std::string kCompletion = R"({"prompt":"Once upon a time","max_tokens":8,"temperature":0})";

class HttpRobustness : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    file_ = std::make_unique<gguf::File>(gguf::File::open(test::fixture("trained/stories260K.gguf").string()));
    engine::EngineOptions eo;
    eo.n_threads = 1;
    eo.n_ctx = 256;
    eo.n_kv_tokens = 4 * 256;
    engine_ = std::make_unique<engine::Engine>(*file_, eo);
    ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.max_sequences = 4;
    so.max_queue = 8;
    so.max_body_bytes = kMaxBody;
    server_ = std::make_unique<Server>(so);
    port_ = server_->start();
    tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::from_gguf(*file_);
    auto chat_prompt = [tokenizer](const std::vector<ChatMessage>& messages) {
      std::string text;
      for (const ChatMessage& m : messages) text += m.content + "\n";
      return tokenizer.encode(text, true, false);
    };
    engine::SamplerParams sampling;
    sampling.temperature = 0;
    server_->serve({engine_.get(), tokenizer, "stories260K", sampling, chat_prompt, false, 0});
    // The greedy text every later completion must give again.
    const Reply reply = request(post("/v1/completions", kCompletion));
    ASSERT_EQ(reply.status, 200) << reply.body;
    expected_text_ = reply.body["choices"][0]["text"].get<std::string>();
    ASSERT_FALSE(expected_text_.empty());
  }

  static void TearDownTestSuite() {
    if (server_) server_->shutdown(0ms);
    server_.reset();
    engine_.reset();
    file_.reset();
  }

  // A well-formed request on its own connection, closed after the reply.
  static Reply request(const std::string& bytes) {
    const std::string answer = talk(port_, bytes);
    Reply reply;
    const std::vector<int> s = statuses(answer);
    if (s.empty()) return reply;
    reply.status = s[0];
    const size_t body = answer.find("\r\n\r\n");
    if (body != std::string::npos) reply.body = json::parse(answer.substr(body + 4), nullptr, false);
    return reply;
  }

  // The server still answers /health and gives the same greedy completion.
  static void expect_still_serves() {
    const Reply health = request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    EXPECT_EQ(health.status, 200);
    EXPECT_EQ(health.body, json({{"status", "ok"}}));
    const Reply reply = request(post("/v1/completions", kCompletion));
    ASSERT_EQ(reply.status, 200) << reply.body;
    EXPECT_EQ(reply.body["choices"][0]["text"], expected_text_);
  }

  void TearDown() override { expect_still_serves(); }

  static inline std::unique_ptr<gguf::File> file_;
  static inline std::unique_ptr<engine::Engine> engine_;
  static inline std::unique_ptr<Server> server_;
  static inline int port_ = 0;
  static inline std::string expected_text_;
};

TEST_F(HttpRobustness, BadRequestLines) {
  const std::vector<std::string> lines = {"GARBAGE", "GET", "GET /health", "GET /health HTTP/9.9", "GET  HTTP/1.1",
                                         "/health GET HTTP/1.1", std::string("\0\x01\x02 / HTTP/1.1", 14),
                                         "GET /" + std::string(20000, 'a') + " HTTP/1.1"};
  for (const std::string& line : lines) {
    expect_refused(talk(port_, line + "\r\nHost: 127.0.0.1\r\n\r\n"), line.substr(0, 40));
  }
}

TEST_F(HttpRobustness, UnknownAndUnwantedMethods) {
  for (const char* method : {"BREW", "DELETE", "PUT", "PATCH", "OPTIONS", "get"}) {
    const std::string answer = talk(port_, std::string(method) + " /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                                                    "Content-Length: 2\r\n\r\n{}");
    expect_refused(answer, method);
  }
  // A method the server knows is refused with 405 before its body is read.
  EXPECT_EQ(statuses(talk(port_, "DELETE /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")), std::vector<int>{405});
}

TEST_F(HttpRobustness, HugeHeaders) {
  // One header line of 100 KiB, and many header lines.
  expect_refused(talk(port_, "GET /health HTTP/1.1\r\nX-Big: " + std::string(100 * 1024, 'a') + "\r\n\r\n"),
                 "a 100 KiB header line");
  std::string many = "GET /health HTTP/1.1\r\n";
  for (int i = 0; i < 5000; ++i) many += "X-A: b\r\n";
  const std::string answer = talk(port_, many + "\r\n");
  // Many small headers may be accepted; if so, /health answers.
  if (!answer.empty() && statuses(answer) != std::vector<int>{200}) expect_refused(answer, "5000 header lines");
}

TEST_F(HttpRobustness, ContentLengthLargerThanTheBodyThenClose) {
  const std::string body = R"({"prompt":"Once)";
  expect_refused(talk(port_, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body,
                      true),
                 "a body shorter than its Content-Length", true);
  // The same, with the connection closed right away instead of half-closed.
  {
    Connection c(port_);
    c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body);
  }
}

TEST_F(HttpRobustness, NegativeAndGarbageContentLengths) {
  const auto head = [](const std::string& length) {
    return "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + "\r\n\r\n";
  };
  // Read as a number the body holds (a prefix of digits, or 0): the body is cut there, and refused as JSON.
  for (const char* length : {"abc", "1x", "0x10", "1, 2"}) {
    const std::string answer = talk(port_, head(length) + kCompletion);
    expect_refused(answer, length);
    EXPECT_EQ(statuses(answer).at(0), 400) << length;
  }
  // Read as a number beyond the limit, the server reads (and drops) what it is sent until the client closes; an
  // empty one is no length, and the body runs to the close.
  for (const char* length : {"-5", "-1", "99999999999999999999999", "18446744073709551615", "9223372036854775808", " ",
                             ""}) {
    expect_refused(talk(port_, head(length) + kCompletion, true), length, true);
  }
  // Two lengths: the first counts.
  expect_refused(talk(port_, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n"
                             "\r\n{}"),
                 "two Content-Lengths");
}

TEST_F(HttpRobustness, ChunkedBodiesWithGarbageSizes) {
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  // Sizes that cannot be read, or data not followed by CRLF: refused at once.
  const std::vector<std::string> broken = {"zz\r\n", "-1\r\n{}\r\n0\r\n\r\n", "ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
                                          "ffffffffffffffff\r\n{}\r\n0\r\n\r\n", "2\r\n{}xx\r\n0\r\n\r\n", "\r\n\r\n"};
  for (const std::string& chunks : broken) expect_refused(talk(port_, head + chunks), chunks.substr(0, 30));
  // Chunks that promise more than comes before the client closes.
  const std::vector<std::string> short_ = {"2\r\n{}", "1;ext\r\n{\r\n", "100000\r\n" + std::string(1000, 'a'),
                                          "7fffffffffffffff\r\n{}"};
  for (const std::string& chunks : short_) expect_refused(talk(port_, head + chunks, true), chunks.substr(0, 30), true);
  // A chunked body over the limit.
  std::string over = head;
  for (size_t sent = 0; sent <= kMaxBody; sent += 4096) over += "1000\r\n" + std::string(4096, 'a') + "\r\n";
  const std::string answer = talk(port_, over + "0\r\n\r\n");
  expect_refused(answer, "a chunked body over the limit");
  if (!answer.empty()) {
    EXPECT_EQ(statuses(answer), std::vector<int>{413});
  }
  // A well-formed chunked body works.
  const std::string half = kCompletion.substr(0, 10), rest = kCompletion.substr(10);
  char sizes[64];
  std::snprintf(sizes, sizeof sizes, "%zx", half.size());
  std::string good = head + sizes + "\r\n" + half + "\r\n";
  std::snprintf(sizes, sizeof sizes, "%zx", rest.size());
  good += sizes + std::string("\r\n") + rest + "\r\n0\r\n\r\n";
  const Reply reply = request(good);
  EXPECT_EQ(reply.status, 200) << reply.body;
}

TEST_F(HttpRobustness, BodyOverTheLimitIs413) {
  const std::string content(kMaxBody + 1024, 'a');
  const std::string body = R"({"prompt":")" + content + R"(","max_tokens":1})";
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/tokenize"}) {
    const std::string answer = talk(port_, post(path, body));
    expect_refused(answer, path);
    EXPECT_EQ(statuses(answer), std::vector<int>{413}) << path;
  }
}

TEST_F(HttpRobustness, RequestsCutOffThenClosed) {
  const std::string full = post("/v1/completions", kCompletion);
  // Cut at every few bytes of the head and body, the connection closed at once or half-closed.
  for (size_t cut = 1; cut < full.size(); cut += 7) {
    {
      Connection c(port_);
      c.send(std::string_view(full).substr(0, cut));
    }
    if (cut % 3 == 1) {
      const std::string answer = talk(port_, std::string_view(full).substr(0, cut), true);
      expect_refused(answer, "cut at " + std::to_string(cut), true);
    }
  }
}

// cpp-httplib 0.11 does not support pipelining (yhirose/cpp-httplib#1271): requests that arrive in the same read
// as the one before them are dropped with its per-request buffer, and the connection closes at the keep-alive
// timeout. What is answered must still be the right answers, in order.
TEST_F(HttpRobustness, PipelinedRequests) {
  const std::string health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  // What is dropped is never answered: the read ends when the server closes, at its 2 s keep-alive timeout.
  const std::string answer =
      talk(port_, health + post("/v1/completions", kCompletion) + post("/v1/completions", "{") +
                      "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
           false, 4);
  const std::vector<int> expected = {200, 200, 400, 200};
  const std::vector<int> s = statuses(answer);
  ASSERT_FALSE(s.empty());
  ASSERT_LE(s.size(), expected.size());
  EXPECT_TRUE(std::equal(s.begin(), s.end(), expected.begin())) << answer.substr(0, 2000);
  if (s.size() >= 2) {
    EXPECT_NE(answer.find(json(expected_text_).dump()), std::string::npos);
  }
  // A body refused for its size is answered with 413 even with a request behind it.
  const std::vector<int> after_413 =
      statuses(talk(port_, post("/v1/completions", std::string(kMaxBody + 1, ' ')) + health));
  EXPECT_EQ(after_413, std::vector<int>{413});
}

TEST_F(HttpRobustness, DeeplyNestedJson) {
  constexpr int kDepth = 10000;
  const std::string arrays = std::string(kDepth, '[') + std::string(kDepth, ']');
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}) {
    const std::string answer = talk(port_, post(path, arrays));
    expect_refused(answer, path);
    EXPECT_EQ(statuses(answer), std::vector<int>{400}) << path;
  }
  // Nested in a field the request does not know: ignored.
  const std::string body = R"({"prompt":"Once upon a time","max_tokens":8,"temperature":0,"x":)" + arrays + "}";
  ASSERT_LE(body.size(), kMaxBody);
  const Reply reply = request(post("/v1/completions", body));
  EXPECT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.body["choices"][0]["text"], expected_text_);
  // Nested where a value is needed.
  std::string objects;
  for (int i = 0; i < kDepth / 2; ++i) objects += R"({"a":)";
  objects += "1" + std::string(kDepth / 2, '}');
  const Reply bias = request(post("/v1/completions", R"({"prompt":"x","logit_bias":)" + objects + "}"));
  EXPECT_EQ(bias.status, 400);
  EXPECT_EQ(bias.body["error"]["param"], "logit_bias");
}

}  // namespace
}  // namespace tessera::server
