// The store's pure logic (src/hub/store.h, progress.h): manifests, where a resumed download starts, what a
// reply to a Range request means, the folder layout, and the progress text.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "hub/progress.h"
#include "hub/store.h"

namespace tessera::hub {
namespace {

namespace fs = std::filesystem;

const std::string kSha = "9fbe2ac0c6cd5f6d4b3f1a0e6d1b2c3d4e5f60718293a4b5c6d7e8f901234567";
const std::string kOtherSha = "0000000000000000000000000000000000000000000000000000000000000001";

TEST(Manifest, RoundTripsAndRefusesBadFields) {
  const Manifest m{{"https://hub/o/r/resolve/main/m.gguf", 668788096, kSha, "abc123"}, "2026-12-05T10:00:00Z"};
  const Manifest back = manifest_from_json(to_json(m));
  EXPECT_EQ(back.source.url, m.source.url);
  EXPECT_EQ(back.source.size, m.source.size);
  EXPECT_EQ(back.source.sha256, m.source.sha256);
  EXPECT_EQ(back.source.commit, m.source.commit);
  EXPECT_EQ(back.downloaded_at, m.downloaded_at);
  EXPECT_THROW(manifest_from_json("not json"), std::runtime_error);
  EXPECT_THROW(manifest_from_json(R"({"url":"u","size":1,"sha256":"abc","commit":"","downloaded_at":""})"),
               std::runtime_error);
  EXPECT_THROW(
      manifest_from_json(R"({"url":"u","size":"1","sha256":")" + kSha + R"(","commit":"","downloaded_at":""})"),
      std::runtime_error);
  // Sizes that are not whole numbers in range (the fuzzer's find: a float beyond 2^64 was converted regardless).
  for (const std::string size : {"184467440737095516155", "1.5", "-1"}) {
    EXPECT_THROW(manifest_from_json(R"({"url":"u","size":)" + size + R"(,"sha256":")" + kSha +
                                    R"(","commit":"","downloaded_at":""})"),
                 std::runtime_error)
        << size;
  }
  EXPECT_THROW(remote_version_from_json("[]"), std::runtime_error);
}

TEST(Resume, OnlyAPartOfTheSameVersionIsContinued) {
  const RemoteVersion remote{"u", 1000, kSha, ""};
  EXPECT_EQ(plan_resume(remote, 400, remote).offset, 400u);
  EXPECT_FALSE(plan_resume(remote, 400, remote).discard_part);
  EXPECT_EQ(plan_resume(remote, 1000, remote).offset, 1000u);  // complete: only the checks are left
  const RemoteVersion older{"u", 1000, kOtherSha, ""};
  EXPECT_EQ(plan_resume(older, 400, remote).offset, 0u);
  EXPECT_TRUE(plan_resume(older, 400, remote).discard_part);
  EXPECT_TRUE(plan_resume(remote, 1001, remote).discard_part);       // longer than the file
  EXPECT_TRUE(plan_resume(std::nullopt, 400, remote).discard_part);  // no record of what the bytes are
  EXPECT_FALSE(plan_resume(std::nullopt, 0, remote).discard_part);
}

TEST(Resume, TheReplyDecidesWhereItsBodyGoes) {
  EXPECT_EQ(write_offset_for_reply(400, 206, "bytes 400-999/1000", 1000), 400u);
  EXPECT_EQ(write_offset_for_reply(400, 200, std::nullopt, 1000), 0u);  // the range was ignored: start over
  EXPECT_EQ(write_offset_for_reply(0, 200, std::nullopt, 1000), 0u);
  EXPECT_THROW(write_offset_for_reply(400, 206, "bytes 0-999/1000", 1000), std::runtime_error);
  EXPECT_THROW(write_offset_for_reply(400, 206, "bytes 400-999/2000", 1000), std::runtime_error);
  EXPECT_THROW(write_offset_for_reply(400, 206, std::nullopt, 1000), std::runtime_error);
  EXPECT_THROW(write_offset_for_reply(400, 416, std::nullopt, 1000), std::runtime_error);
}

TEST(Store, LayoutEntriesFindAndRemove) {
  const fs::path root = fs::temp_directory_path() / ("tessera-store-test-" + std::to_string(getpid()));
  fs::remove_all(root);
  const Store store(root);
  EXPECT_TRUE(store.entries().empty());
  const fs::path a = store.model_path("o/r", "m.Q8_0.gguf");
  const fs::path b = store.model_path("o/r", "sub/m.Q4_K_M.gguf");
  EXPECT_EQ(a, root / "o" / "r" / "m.Q8_0.gguf");
  EXPECT_EQ(Store::manifest_path(a), root / "o" / "r" / "m.Q8_0.gguf.json");
  EXPECT_EQ(Store::part_path(a), root / "o" / "r" / "m.Q8_0.gguf.part");
  fs::create_directories(b.parent_path());
  std::ofstream(a) << "12345";
  std::ofstream(b) << "123";
  std::ofstream(Store::part_path(store.model_path("o/r", "other.gguf"))) << "1";  // a download, not a model
  std::ofstream(Store::manifest_path(a)) << to_json(Manifest{{"u", 5, kSha, ""}, "2026-12-05T10:00:00Z"});

  const auto entries = store.entries();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "o/r/m.Q8_0.gguf");
  EXPECT_EQ(entries[0].size, 5u);
  ASSERT_TRUE(entries[0].manifest);
  EXPECT_EQ(entries[0].manifest->source.sha256, kSha);
  EXPECT_EQ(entries[1].name, "o/r/sub/m.Q4_K_M.gguf");
  EXPECT_FALSE(entries[1].manifest);

  EXPECT_EQ(store.find({"o/r", "", "q4_k_m"}).size(), 1u);
  EXPECT_EQ(store.find({"o/r", "m.Q8_0.gguf", ""}).size(), 1u);
  EXPECT_EQ(store.find({"o/r", "", ""}).size(), 2u);
  EXPECT_TRUE(store.find({"o/x", "", ""}).empty());

  store.remove(entries[1]);
  EXPECT_FALSE(fs::exists(b.parent_path())) << "the emptied folder goes too";
  store.remove(entries[0]);
  EXPECT_FALSE(fs::exists(Store::manifest_path(a)));
  EXPECT_TRUE(fs::exists(root / "o" / "r")) << "still holds another download's part file";
  fs::remove_all(root);
}

TEST(Progress, BytesDurationsAndTheBar) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(668788096), "637.8 MiB");
  EXPECT_EQ(format_bytes(uint64_t{4368439296}), "4.07 GiB");
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(192), "3m12s");
  EXPECT_EQ(format_duration(7500), "2h05m");
  EXPECT_EQ(progress_text(512 << 20, 1024 << 20, 0), "[##########----------]  50%  512.0 MiB / 1.00 GiB");
  EXPECT_EQ(progress_text(512 << 20, 1024 << 20, 4 << 20),
            "[##########----------]  50%  512.0 MiB / 1.00 GiB  4.00 MiB/s  ETA 2m08s");
  EXPECT_EQ(progress_text(1024, 1024, 100), "[####################] 100%  1.00 KiB / 1.00 KiB  100 B/s");
}

}  // namespace
}  // namespace tessera::hub
