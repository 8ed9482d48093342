// `tessera bench-serve` against `tessera serve` on the stories260K fixture (127.0.0.1, a free port): the JSON
// report's fields, token counts that add up (checked also against the server's own /metrics), the prefix cache
// hit by --shared-prefix, HTTP errors counted, and a server that cannot be reached.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/fixtures.h"

namespace {

using namespace std::chrono_literals;
using tessera::test::Child;
using tessera::test::ChildExit;

// Every run is bounded: a bench-serve that hangs fails the test instead of stalling it.
ChildExit run(const std::vector<std::string>& args) { return Child(args).wait(120s); }

class BenchServeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<Child>(
        std::vector<std::string>{"serve", "-m", tessera::test::fixture("trained/stories260K.gguf").string(), "--host",
                                 "127.0.0.1", "--port", "0", "-t", "1"});
    if (!server_->wait_for_stdout("\n", 60s)) return;
    std::smatch m;
    static const std::regex ready(R"(listening on (http://127\.0\.0\.1:(\d+)))");
    if (std::regex_search(server_->out(), m, ready)) {
      url_ = m[1].str();
      port_ = std::stoi(m[2].str());
    }
  }
  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override { ASSERT_FALSE(url_.empty()) << "the server did not start: " << server_->err(); }

  // Runs bench-serve with --output json against the server and parses the report.
  static nlohmann::json bench_json(std::vector<std::string> args) {
    args.insert(args.begin(), {"bench-serve", "--url", url_});
    args.insert(args.end(), {"--output", "json"});
    const ChildExit r = run(args);
    EXPECT_TRUE(r.exited && r.code == 0) << r.err;
    return r.exited && r.code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json();
  }

  // A counter of the server's Prometheus text.
  static double metric(const std::string& name) {
    httplib::Client client("127.0.0.1", port_);
    const httplib::Result r = client.Get("/metrics");
    if (!r || r->status != 200) return -1;
    std::smatch m;
    const std::regex line("(^|\n)" + name + " ([0-9.e+]+)\n");
    return std::regex_search(r->body, m, line) ? std::stod(m[2].str()) : -1;
  }

  static std::unique_ptr<Child> server_;
  static std::string url_;
  static int port_;
};
std::unique_ptr<Child> BenchServeCli::server_;
std::string BenchServeCli::url_;
int BenchServeCli::port_ = 0;

TEST_F(BenchServeCli, JsonHasALevelPerConcurrencyAndTheTokensAddUp) {
  const double generated_before = metric("tessera_generated_tokens_total");
  const double prompt_before = metric("tessera_prompt_tokens_total");
  const nlohmann::json j =
      bench_json({"--concurrency", "1,4", "--requests", "8", "--input-len", "16", "--output-len", "8"});
  ASSERT_TRUE(j.is_array()) << j.dump();
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["concurrency"], 1);
  EXPECT_EQ(j[1]["concurrency"], 4);
  for (const nlohmann::json& level : j) {
    SCOPED_TRACE(level.dump());
    EXPECT_EQ(level["endpoint"], "completions");
    EXPECT_EQ(level["model"], "stories260K.gguf");
    EXPECT_EQ(level["requests"], 8);
    EXPECT_EQ(level["completed"], 8);
    EXPECT_EQ(level["errors"], 0);
    EXPECT_EQ(level["short_requests"], 0);
    // Every request makes exactly --output-len tokens (the end of generation is banned), as the usage counts them
    // and as the stream's chunks carry them; every prompt is --input-len tokens as the server counts them.
    EXPECT_EQ(level["output_tokens"], 8 * 8);
    EXPECT_EQ(level["streamed_tokens"], 8 * 8);
    EXPECT_EQ(level["prompt_tokens"], 8 * 16);
    EXPECT_EQ(level["prompt_overhead_tokens"], 1);               // the BOS token stories260K's tokenizer adds
    EXPECT_EQ(level["end_tokens"], nlohmann::json::array({2}));  // </s>

    const double duration = level["duration_s"].get<double>();
    ASSERT_GT(duration, 0);
    EXPECT_NEAR(level["request_throughput"].get<double>(), 8 / duration, 1e-9);
    EXPECT_NEAR(level["output_tokens_per_s"].get<double>(), 64 / duration, 1e-9);
    EXPECT_NEAR(level["total_tokens_per_s"].get<double>(), (64 + 128) / duration, 1e-9);
    for (const char* name : {"ttft", "itl", "e2e"}) {
      SCOPED_TRACE(name);
      const double p50 = level[std::string(name) + "_p50_ms"], p90 = level[std::string(name) + "_p90_ms"],
                   p99 = level[std::string(name) + "_p99_ms"];
      EXPECT_GE(p50, 0);
      EXPECT_LE(p50, p90);
      EXPECT_LE(p90, p99);
    }
    EXPECT_GT(level["ttft_p50_ms"].get<double>(), 0);
    EXPECT_GE(level["e2e_p50_ms"].get<double>(), level["ttft_p50_ms"].get<double>());
    // No request waits longer than the whole level ran.
    EXPECT_LE(level["e2e_p99_ms"].get<double>(), 1000 * duration);
  }
  // The server counted the same tokens: 2 levels x 8 requests, and the untimed first request (2 tokens of a
  // prompt of "Hello").
  EXPECT_EQ(metric("tessera_generated_tokens_total") - generated_before, 2 * 8 * 8 + 2);
  EXPECT_GE(metric("tessera_prompt_tokens_total") - prompt_before, 2 * 8 * 16);
}

TEST_F(BenchServeCli, MarkdownHasARowPerLevel) {
  const ChildExit r = run({"bench-serve", "--url", url_, "--concurrency", "2,3", "--requests", "3,4", "--input-len",
                           "12", "--output-len", "4"});
  ASSERT_TRUE(r.exited && r.code == 0) << r.err;
  EXPECT_NE(r.out.find("| concurrency | requests |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n| 2 | 3 | 0 | 12.0 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n| 3 | 4 | 0 | 12.0 |"), std::string::npos) << r.out;
}

TEST_F(BenchServeCli, SharedPrefixIsFoundInThePrefixCache) {
  // Prompts of 64 tokens: BOS and 63 of text, the first 32 of which are the same in every request.
  const nlohmann::json shared =
      bench_json({"--requests", "4", "--input-len", "64", "--output-len", "4", "--shared-prefix", "0.5"});
  ASSERT_EQ(shared.size(), 1u);
  EXPECT_EQ(shared[0]["completed"], 4);
  EXPECT_EQ(shared[0]["prompt_tokens"], 4 * 64);
  // The three requests after the first find at least the shared text in the cache, and not the rest.
  EXPECT_GE(shared[0]["cached_tokens"].get<int>(), 3 * 32);
  EXPECT_LT(shared[0]["cached_tokens"].get<int>(), 3 * 48);

  const nlohmann::json distinct = bench_json({"--requests", "4", "--input-len", "64", "--output-len", "4"});
  ASSERT_EQ(distinct.size(), 1u);
  EXPECT_LT(distinct[0]["cached_tokens"].get<int>(), 4 * 8);
}

TEST_F(BenchServeCli, ChatEndpointCountsTheSameWay) {
  const nlohmann::json j = bench_json(
      {"--endpoint", "chat", "--concurrency", "2", "--requests", "4", "--input-len", "20", "--output-len", "6"});
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["completed"], 4) << j.dump();
  EXPECT_EQ(j[0]["output_tokens"], 4 * 6);
  EXPECT_EQ(j[0]["streamed_tokens"], 4 * 6);
  EXPECT_EQ(j[0]["prompt_tokens"], 4 * 20);
}

TEST_F(BenchServeCli, HttpErrorsAreCountedAndReported) {
  // The fixture's context holds 2048 tokens: prompts of 2045 and 8 more to generate do not fit, and each request
  // gets a 400.
  const nlohmann::json j = bench_json({"--requests", "3", "--input-len", "2045", "--output-len", "8"});
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["completed"], 0);
  EXPECT_EQ(j[0]["errors"], 3);
  ASSERT_EQ(j[0]["error_messages"].size(), 1u) << j.dump();
  const std::string message = j[0]["error_messages"].begin().key();
  EXPECT_EQ(message.rfind("HTTP 400: ", 0), 0u) << message;
  EXPECT_NE(message.find("maximum context length is 2048"), std::string::npos) << message;
  EXPECT_EQ(j[0]["error_messages"].begin().value(), 3);
  EXPECT_TRUE(j[0]["ttft_p50_ms"].is_null());
}

TEST_F(BenchServeCli, ARefusedUrlIsOneLineAndExit1) {
  // A port bound but not listening refuses connections, and no other program can take it meanwhile.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  socklen_t length = sizeof address;
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(address.sin_port));

  const ChildExit r = run({"bench-serve", "--url", url, "--requests", "2"});
  close(fd);
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "error: cannot reach the server at " + url + ": could not connect (refused, or no such host)\n");
}

TEST_F(BenchServeCli, BadArgumentsAreUsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--url", "ftp://127.0.0.1:1"},
           {"--url", url_ + "/v1"},
           {"--url", url_, "--concurrency", "0"},
           {"--url", url_, "--concurrency", "1,2,3", "--requests", "4,5"},
           {"--url", url_, "--shared-prefix", "1"},
           {"--url", url_, "--output-len", "0"},
       }) {
    std::vector<std::string> full = {"bench-serve"};
    full.insert(full.end(), args.begin(), args.end());
    const ChildExit r = run(full);
    SCOPED_TRACE(args[args.size() - 1]);
    EXPECT_TRUE(r.exited);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  }
}

}  // namespace
