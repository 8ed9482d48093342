// `tessera pull`, `list`, `rm` and `run`/`chat -m NAME` against the mock Hub: both reference forms, resume within a
// run and across runs (asserting the bytes requested), interruption, checksum mismatch, a file that is not
// GGUF, gated and missing repositories, no network, a full disk; nothing half-written under a final name.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fixtures.h"
#include "common/run_tessera.h"
#include "hub/cli_runner.h"
#include "hub/mock_hub.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using test::Cli;
using test::MockHub;

const std::string kRepo = "tessera-test/tiny-llama-GGUF";
const std::string kQ8 = "tiny-llama-Q8_0.gguf";
const std::string kQ4KM = "tiny-llama-Q4_K_M.gguf";

std::string fixture_bytes(const std::string& name) {
  return test::read_bytes(test::fixture("models/" + name).string());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(text.substr(start, nl - start));
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

// The lines of stderr that report an error: exactly one is expected for each failure.
std::vector<std::string> error_lines(const std::string& err) {
  std::vector<std::string> out;
  for (const std::string& line : lines_of(err))
    if (line.starts_with("error:")) out.push_back(line);
  return out;
}

class HubCli : public ::testing::Test {
 protected:
  void SetUp() override {
    home_ = fs::temp_directory_path() / ("tessera-hub-test-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(home_);
    fs::create_directories(home_);
    hub_.add_repo(kRepo, {{kQ8, {fixture_bytes(kQ8), ""}}, {kQ4KM, {fixture_bytes(kQ4KM), ""}}});
  }
  void TearDown() override { fs::remove_all(home_); }

  Cli::Env env() const { return {{"TESSERA_HOME", home_.string()}, {"HF_ENDPOINT", hub_.endpoint()}}; }
  fs::path store_dir() const { return home_ / "models" / kRepo; }
  test::CommandResult tessera(const std::vector<std::string>& args, Cli::Env extra = {}) {
    Cli::Env e = env();
    for (const auto& [k, v] : extra) e[k] = v;
    return Cli::run(args, e);
  }
  // No file in the store is left half-written: only finished models and their manifests, or a kept part.
  std::vector<std::string> store_files() const {
    std::vector<std::string> names;
    if (!fs::exists(home_ / "models")) return names;
    for (const auto& e : fs::recursive_directory_iterator(home_ / "models"))
      if (e.is_regular_file()) names.push_back(e.path().lexically_relative(home_ / "models").generic_string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path home_;
  MockHub hub_;
};

TEST_F(HubCli, PullByQuantTagStoresTheVerifiedFileWithItsManifest) {
  const auto r = tessera({"pull", kRepo + ":q8_0"});  // the tag matches in any case
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const fs::path model = store_dir() / kQ8;
  EXPECT_EQ(r.out, model.string() + "\n");
  const std::string expected = fixture_bytes(kQ8);
  EXPECT_EQ(test::read_bytes(model.string()), expected);
  EXPECT_EQ(store_files(), (std::vector<std::string>{kRepo + "/" + kQ8, kRepo + "/" + kQ8 + ".json"}));

  const nlohmann::json manifest = nlohmann::json::parse(test::read_bytes(model.string() + ".json"));
  EXPECT_EQ(manifest["sha256"], test::sha256_hex(expected));
  EXPECT_EQ(manifest["size"], 1967616);  // the fixture's size in its README
  EXPECT_EQ(manifest["url"], hub_.endpoint() + "/" + kRepo + "/resolve/main/" + kQ8);
  EXPECT_EQ(manifest["commit"], MockHub::kCommit);
  EXPECT_EQ(manifest["downloaded_at"].get<std::string>().size(), std::string("2026-12-05T10:00:00Z").size());

  // The listing picked the file, the resolve URL gave its sha256, the CDN the bytes, all of them once.
  EXPECT_EQ(hub_.requests_to("/api/models/" + kRepo + "/tree/main").size(), 1u);
  EXPECT_EQ(hub_.requests_to("/" + kRepo + "/resolve/main/" + kQ8, "HEAD").size(), 1u);
  const auto cdn = hub_.requests_to("/cdn/");
  ASSERT_EQ(cdn.size(), 1u);
  EXPECT_EQ(cdn[0].range, "");
  EXPECT_EQ(cdn[0].body_bytes, expected.size());
}

TEST_F(HubCli, PullByUrlThenAgainIsUpToDateWithoutDownloading) {
  const std::string ref = "hf://" + kRepo + "/" + kQ4KM;
  const auto first = tessera({"pull", ref});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(test::read_bytes((store_dir() / kQ4KM).string()), fixture_bytes(kQ4KM));
  EXPECT_TRUE(hub_.requests_to("/api/models/").empty()) << "a named file needs no listing";

  hub_.clear_requests();
  const auto second = tessera({"pull", ref});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.err.find("up to date"), std::string::npos) << second.err;
  EXPECT_TRUE(hub_.requests_to("/cdn/").empty());
}

TEST_F(HubCli, QuantTagThatMatchesNoneOrSeveralFilesListsThem) {
  hub_.add_repo("tessera-test/two-Q8",
                {{"a.Q8_0.gguf", {fixture_bytes(kQ8), ""}}, {"b.Q8_0.gguf", {fixture_bytes(kQ8), ""}}});
  const auto none = tessera({"pull", kRepo + ":Q5_K_M"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_EQ(error_lines(none.err),
            std::vector<std::string>{"error: no .gguf file in " + kRepo +
                                     " carries the tag 'Q5_K_M'; it has: " + kQ4KM + ", " + kQ8});
  // "Q4_K" is a tag of its own, not a prefix of Q4_K_M.
  EXPECT_EQ(tessera({"pull", kRepo + ":Q4_K"}).exit_code, 1);
  const auto several = tessera({"pull", "tessera-test/two-Q8:Q8_0"});
  EXPECT_EQ(several.exit_code, 1);
  EXPECT_NE(several.err.find("matches 2 files"), std::string::npos) << several.err;
  EXPECT_NE(several.err.find("a.Q8_0.gguf, b.Q8_0.gguf"), std::string::npos) << several.err;
  EXPECT_TRUE(store_files().empty());
}

TEST_F(HubCli, DroppedConnectionIsResumedWithARangeRequestInTheSameRun) {
  const std::string expected = fixture_bytes(kQ8);
  const size_t cut = 300000;
  hub_.cut_replies_after(cut, 1);
  const auto r = tessera({"pull", kRepo + ":Q8_0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_bytes((store_dir() / kQ8).string()), expected);
  const auto cdn = hub_.requests_to("/cdn/");
  ASSERT_EQ(cdn.size(), 2u);
  EXPECT_EQ(cdn[0].range, "");
  EXPECT_EQ(cdn[0].body_bytes, cut);
  EXPECT_EQ(cdn[1].range, "bytes=" + std::to_string(cut) + "-");
  EXPECT_EQ(cdn[1].body_bytes, expected.size() - cut);
}

TEST_F(HubCli, ASecondRunDownloadsOnlyWhatTheFirstDidNotGet) {
  const std::string expected = fixture_bytes(kQ8);
  const size_t cut = 100000;
  hub_.cut_replies_after(cut);  // every reply: the run gives up after its 4 attempts
  const auto first = tessera({"pull", kRepo + ":Q8_0"});
  EXPECT_EQ(first.exit_code, 1);
  const auto errors = error_lines(first.err);
  ASSERT_EQ(errors.size(), 1u) << first.err;
  EXPECT_NE(errors[0].find("stopped at 400000 of 1967616 bytes"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("run the same command again to resume"), std::string::npos) << errors[0];
  EXPECT_FALSE(fs::exists(store_dir() / kQ8));
  EXPECT_EQ(fs::file_size(store_dir() / (kQ8 + ".part")), 4 * cut);

  hub_.cut_replies_after(0);
  hub_.clear_requests();
  const auto second = tessera({"pull", kRepo + ":Q8_0"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const auto cdn = hub_.requests_to("/cdn/");
  ASSERT_EQ(cdn.size(), 1u);
  EXPECT_EQ(cdn[0].range, "bytes=400000-");
  EXPECT_EQ(cdn[0].body_bytes, expected.size() - 4 * cut);
  EXPECT_EQ(test::read_bytes((store_dir() / kQ8).string()), expected);
  EXPECT_EQ(store_files(), (std::vector<std::string>{kRepo + "/" + kQ8, kRepo + "/" + kQ8 + ".json"}));
}

TEST_F(HubCli, InterruptKeepsThePartForTheNextRun) {
  const size_t sent = 500000;
  hub_.stall_after(sent);
  Cli::Running run = Cli::start({"pull", kRepo + ":Q8_0"}, env());
  ASSERT_TRUE(hub_.wait_until_stalled(std::chrono::seconds(20)));
  // The client has the bytes once the part file holds them; then it is waiting on the stalled server.
  const fs::path part = store_dir() / (kQ8 + ".part");
  for (int i = 0; i < 200 && (!fs::exists(part) || fs::file_size(part) < sent); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(run.pid, SIGINT);
  const auto r = run.wait();
  hub_.release_stall();
  EXPECT_EQ(r.exit_code, 1);
  const auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << r.err;
  EXPECT_NE(errors[0].find("interrupted"), std::string::npos) << errors[0];
  EXPECT_EQ(fs::file_size(part), sent);
  EXPECT_FALSE(fs::exists(store_dir() / kQ8));

  hub_.clear_requests();
  ASSERT_EQ(tessera({"pull", kRepo + ":Q8_0"}).exit_code, 0);
  EXPECT_EQ(hub_.requests_to("/cdn/").at(0).range, "bytes=" + std::to_string(sent) + "-");
  EXPECT_EQ(test::read_bytes((store_dir() / kQ8).string()), fixture_bytes(kQ8));
}

TEST_F(HubCli, ChecksumMismatchDeletesThePartFile) {
  hub_.add_repo("tessera-test/corrupt", {{kQ8, {fixture_bytes(kQ8), test::sha256_hex("something else")}}});
  const auto r = tessera({"pull", "tessera-test/corrupt:Q8_0"});
  EXPECT_EQ(r.exit_code, 1);
  const auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << r.err;
  EXPECT_NE(errors[0].find("checksum mismatch for tessera-test/corrupt/" + kQ8), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find(test::sha256_hex(fixture_bytes(kQ8))), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("deleted the partial file"), std::string::npos) << errors[0];
  EXPECT_TRUE(store_files().empty()) << testing::PrintToString(store_files());
}

TEST_F(HubCli, AFileThatIsNotGgufNeverEntersTheStore) {
  hub_.add_repo("tessera-test/not-gguf", {{"model.Q8_0.gguf", {test::read_bytes(test::fixture("README.md")), ""}}});
  const auto r = tessera({"pull", "tessera-test/not-gguf:Q8_0"});
  EXPECT_EQ(r.exit_code, 1);
  const auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << r.err;
  EXPECT_NE(errors[0].find("tessera-test/not-gguf/model.Q8_0.gguf is not a GGUF file"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("magic"), std::string::npos) << errors[0];
  EXPECT_TRUE(store_files().empty()) << testing::PrintToString(store_files());
}

TEST_F(HubCli, GatedRepositoryNeedsTheTokenWhichTheCdnNeverSees) {
  hub_.add_repo("tessera-test/gated", {{kQ8, {fixture_bytes(kQ8), ""}}}, /*gated=*/true);
  const auto without = tessera({"pull", "tessera-test/gated:Q8_0"});
  EXPECT_EQ(without.exit_code, 1);
  ASSERT_EQ(error_lines(without.err).size(), 1u) << without.err;
  EXPECT_NE(without.err.find("HTTP 401, GatedRepo"), std::string::npos) << without.err;
  EXPECT_NE(without.err.find("set HF_TOKEN or pass --token"), std::string::npos) << without.err;

  const auto wrong = tessera({"pull", "tessera-test/gated:Q8_0", "--token", "hf_wrong"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_NE(wrong.err.find("refused the token"), std::string::npos) << wrong.err;

  const auto no_access = tessera({"pull", "tessera-test/gated:Q8_0", "--token", MockHub::kTokenWithoutAccess});
  EXPECT_EQ(no_access.exit_code, 1);
  ASSERT_EQ(error_lines(no_access.err).size(), 1u) << no_access.err;
  EXPECT_NE(no_access.err.find("HTTP 403, GatedRepo"), std::string::npos) << no_access.err;
  EXPECT_NE(no_access.err.find("accept its terms"), std::string::npos) << no_access.err;

  hub_.clear_requests();
  const auto with_env = tessera({"pull", "tessera-test/gated:Q8_0"}, {{"HF_TOKEN", MockHub::kToken}});
  ASSERT_EQ(with_env.exit_code, 0) << with_env.err;
  const std::string bearer = std::string("Bearer ") + MockHub::kToken;
  EXPECT_EQ(hub_.requests_to("/tessera-test/gated/resolve/main/" + kQ8).at(0).authorization, bearer);
  EXPECT_EQ(hub_.requests_to("/cdn/").at(0).authorization, "");

  ASSERT_EQ(tessera({"rm", "tessera-test/gated:Q8_0"}).exit_code, 0);
  const auto with_flag = tessera({"pull", "hf://tessera-test/gated/" + kQ8, "--token", MockHub::kToken});
  EXPECT_EQ(with_flag.exit_code, 0) << with_flag.err;
}

TEST_F(HubCli, MissingRepositoryOrFileIsNamed) {
  const auto repo = tessera({"pull", "tessera-test/nothing-here:Q8_0"});
  EXPECT_EQ(repo.exit_code, 1);
  EXPECT_EQ(error_lines(repo.err),
            std::vector<std::string>{"error: repository tessera-test/nothing-here not found on " + hub_.endpoint() +
                                     " (HTTP 404)"});
  const auto file = tessera({"pull", "hf://" + kRepo + "/tiny-llama-Q2_K.gguf"});
  EXPECT_EQ(file.exit_code, 1);
  EXPECT_EQ(error_lines(file.err), std::vector<std::string>{"error: tiny-llama-Q2_K.gguf not found in " + kRepo +
                                                            " on " + hub_.endpoint() + " (HTTP 404)"});
}

TEST_F(HubCli, NoNetworkSaysTheHostCannotBeReached) {
  // A port nothing listens on: one the kernel picks for a socket that is then closed without listening.
  const int probe = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ASSERT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(getsockname(probe, reinterpret_cast<sockaddr*>(&address), &length), 0);
  close(probe);
  const int port = ntohs(address.sin_port);
  const auto r = tessera({"pull", kRepo + ":Q8_0"}, {{"HF_ENDPOINT", "http://127.0.0.1:" + std::to_string(port)}});
  EXPECT_EQ(r.exit_code, 1);
  const auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << r.err;
  EXPECT_TRUE(errors[0].starts_with("error: cannot reach 127.0.0.1:" + std::to_string(port))) << errors[0];
}

TEST_F(HubCli, FullDiskGivesOneLineNamingThePartFile) {
  const auto r = Cli::run({"pull", kRepo + ":Q8_0"}, env(), /*file_size_limit=*/256 * 1024);
  EXPECT_EQ(r.exit_code, 1);
  const std::string part = (store_dir() / (kQ8 + ".part")).string();
  EXPECT_EQ(error_lines(r.err), std::vector<std::string>{"error: cannot write " + part + ": File too large"});
  EXPECT_FALSE(fs::exists(store_dir() / kQ8));
  EXPECT_LE(fs::file_size(part), 256u * 1024);
}

TEST_F(HubCli, ListShowsWhatTheHeadersSayAndRmDeletes) {
  const auto empty = tessera({"list"});
  EXPECT_EQ(empty.exit_code, 0);
  EXPECT_EQ(empty.out, "");
  ASSERT_EQ(tessera({"pull", kRepo + ":Q8_0"}).exit_code, 0);
  ASSERT_EQ(tessera({"pull", kRepo + ":Q4_K_M"}).exit_code, 0);

  const auto list = tessera({"list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const auto rows = lines_of(list.out);
  ASSERT_EQ(rows.size(), 3u) << list.out;
  EXPECT_TRUE(rows[0].starts_with("NAME")) << rows[0];
  // Sizes from the fixtures' README (1,143,040 and 1,967,616 bytes); quant from general.file_type as
  // llama-quantize wrote it; 1.8M parameters = the README's shapes (256 embd, 2 layers, 768 ff, 512 vocab).
  auto fields = [](const std::string& row) {
    std::vector<std::string> f;
    std::istringstream in(row);
    for (std::string w; in >> w;) f.push_back(w);
    return f;
  };
  EXPECT_EQ(fields(rows[1]), (std::vector<std::string>{kRepo + "/" + kQ4KM, "1.09", "MiB", "Q4_K_M", "llama", "1.8M"}));
  EXPECT_EQ(fields(rows[2]), (std::vector<std::string>{kRepo + "/" + kQ8, "1.88", "MiB", "Q8_0", "llama", "1.8M"}));

  const auto ambiguous = tessera({"rm", "hf://" + kRepo});
  EXPECT_EQ(ambiguous.exit_code, 1);
  EXPECT_NE(ambiguous.err.find("names 2 models"), std::string::npos) << ambiguous.err;

  const auto rm = tessera({"rm", kRepo + "/" + kQ8});
  ASSERT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_EQ(rm.out, "removed " + kRepo + "/" + kQ8 + " (1.88 MiB)\n");
  EXPECT_EQ(store_files(), (std::vector<std::string>{kRepo + "/" + kQ4KM, kRepo + "/" + kQ4KM + ".json"}));
  const auto again = tessera({"rm", kRepo + "/" + kQ8});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("is not in the store"), std::string::npos) << again.err;

  ASSERT_EQ(tessera({"rm", kRepo + ":Q4_K_M"}).exit_code, 0);
  EXPECT_TRUE(store_files().empty());
  EXPECT_FALSE(fs::exists(home_ / "models" / "tessera-test")) << "empty folders are removed";
}

TEST_F(HubCli, RunTakesAHubNameAndThenNeedsNoNetwork) {
  const std::vector<std::string> generate = {"-p", "Once upon a time", "-n", "8", "--temp", "0", "-t", "1"};
  auto run_with = [&](const std::string& model, Cli::Env extra = {}) {
    std::vector<std::string> args = {"run", "-m", model};
    args.insert(args.end(), generate.begin(), generate.end());
    return tessera(args, extra);
  };
  const auto local = run_with(test::fixture("models/" + kQ8).string());
  ASSERT_EQ(local.exit_code, 0) << local.err;

  const auto by_name = run_with(kRepo + ":Q8_0");
  ASSERT_EQ(by_name.exit_code, 0) << by_name.err;
  EXPECT_EQ(by_name.out, local.out);
  EXPECT_EQ(hub_.requests_to("/cdn/").size(), 1u);

  // Served from the store: the Hub is not asked again, even when it cannot be reached.
  hub_.clear_requests();
  const auto offline = run_with(kRepo + ":Q8_0", {{"HF_ENDPOINT", "http://127.0.0.1:9"}});
  ASSERT_EQ(offline.exit_code, 0) << offline.err;
  EXPECT_EQ(offline.out, local.out);
  EXPECT_TRUE(hub_.requests().empty());

  // tokenize takes the name too.
  const auto tokens = tessera({"tokenize", "-m", kRepo + ":Q8_0", "--text", "Once upon a time", "--json"},
                              {{"HF_ENDPOINT", "http://127.0.0.1:9"}});
  ASSERT_EQ(tokens.exit_code, 0) << tokens.err;
  EXPECT_EQ(tokens.out, "[1,403,407,261,378]\n");  // the prompt tokens of stories260K's vocabulary (RunCli)
}

// chat takes a Hub name too: the model is pulled on first use, and the reply is the local file's.
TEST_F(HubCli, ChatTakesAHubName) {
  const std::filesystem::path input = home_ / "chat-input.txt";
  std::ofstream(input) << "Once upon a time\n";
  auto chat = [&](const std::string& model) {
    for (const auto& [key, value] : env()) ::setenv(key.c_str(), value.c_str(), 1);
    const auto r = test::run_tessera("chat -m " + model + " -n 8 --temp 0 -t 1 < " + input.string());
    for (const auto& [key, value] : env()) ::unsetenv(key.c_str());
    return r;
  };
  const auto local = chat(test::fixture("models/" + kQ8).string());
  ASSERT_EQ(local.exit_code, 0) << local.err;
  const auto by_name = chat(kRepo + ":Q8_0");
  ASSERT_EQ(by_name.exit_code, 0) << by_name.err;
  EXPECT_EQ(by_name.out, local.out);
  EXPECT_FALSE(by_name.out.empty());
  EXPECT_EQ(hub_.requests_to("/cdn/").size(), 1u);
}

}  // namespace
}  // namespace tessera
