// Class 1 of issue 28: output files never replace what is not a regular file, keep a symlink, are checked before
// the work, and leave no temporary file behind on an error (a full disk) or a signal. The io::OutputFile helper
// directly, then logits, quantize and synth through the binary.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

#include "io/output_file.h"
#include "robustness/robustness.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;
using test::ScratchDir;

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st.st_mode;
}

// A Unix socket bound at `path` (closing the descriptor leaves the socket file).
void make_socket(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof address.sun_path);
  std::strcpy(address.sun_path, path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0) << std::strerror(errno);
  close(fd);
}

TEST(OutputFile, CommitReplacesARegularFileAndKeepsItsPermissions) {
  ScratchDir dir;
  const std::string path = dir / "out.bin";
  test::write_whole_file(path, "old");
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  {
    io::OutputFile out(path);
    out.write("new contents", 12);
    EXPECT_EQ(test::read_whole_file(path), "old");  // nothing changes before commit
    out.commit();
  }
  EXPECT_EQ(test::read_whole_file(path), "new contents");
  EXPECT_EQ(mode_of(path) & 07777, 0640u);
  EXPECT_EQ(dir.names(), std::vector<std::string>{"out.bin"});
}

TEST(OutputFile, WithoutCommitTheTargetStaysAndNoTemporaryFileRemains) {
  ScratchDir dir;
  const std::string path = dir / "out.bin";
  test::write_whole_file(path, "old");
  {
    io::OutputFile out(path);
    out.write(std::vector<uint8_t>(3 << 20, 7));  // more than the buffer: some of it reached the temporary file
    EXPECT_EQ(dir.names().size(), 2u);
  }
  EXPECT_EQ(test::read_whole_file(path), "old");
  EXPECT_EQ(dir.names(), std::vector<std::string>{"out.bin"});
}

TEST(OutputFile, TwoWritersOfOnePathUseTheirOwnTemporaryFiles) {
  ScratchDir dir;
  const std::string path = dir / "out.bin";
  io::OutputFile first(path), second(path);
  first.write("first", 5);
  second.write("second", 6);
  EXPECT_EQ(dir.names().size(), 2u);
  second.commit();
  first.commit();
  EXPECT_EQ(test::read_whole_file(path), "first");
  EXPECT_EQ(dir.names(), std::vector<std::string>{"out.bin"});
}

TEST(OutputFile, ASymlinkStaysAndTheFileItNamesIsReplaced) {
  ScratchDir dir;
  test::write_whole_file(dir / "real.bin", "old");
  std::filesystem::create_symlink("real.bin", dir / "link.bin");
  io::OutputFile out(dir / "link.bin");
  out.write("new", 3);
  out.commit();
  EXPECT_TRUE(S_ISLNK(mode_of(dir / "link.bin")));
  EXPECT_EQ(test::read_whole_file(dir / "real.bin"), "new");
}

TEST(OutputFile, RefusesEverythingButARegularFile) {
  ScratchDir dir;
  std::filesystem::create_directory(dir / "folder");
  ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0644), 0);
  make_socket(dir / "socket");
  std::filesystem::create_symlink("/dev/null", dir / "device-link");
  std::filesystem::create_symlink("fifo", dir / "fifo-link");
  std::filesystem::create_symlink("loop-b", dir / "loop-a");
  std::filesystem::create_symlink("loop-a", dir / "loop-b");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir / "folder", "is a directory"},
      {dir / "fifo", "is a FIFO"},
      {dir / "socket", "is a socket"},
      {dir / "device-link", "is a character device"},
      {dir / "fifo-link", "is a FIFO"},
      {dir / "loop-a", "Too many levels of symbolic links"},
      {dir / "missing-folder/out.bin", "No such file or directory"},
      {dir / "fifo/out.bin", "Not a directory"},
      {"", "the output path is empty"},
  };
  for (const auto& [path, message] : cases) {
    try {
      io::OutputFile out(path);
      ADD_FAILURE() << "accepted " << path;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << path << ": " << e.what();
    }
  }
  EXPECT_TRUE(S_ISFIFO(mode_of(dir / "fifo")));
  EXPECT_TRUE(S_ISSOCK(mode_of(dir / "socket")));
  EXPECT_TRUE(S_ISDIR(mode_of(dir / "folder")));
}

TEST(OutputFile, AReadOnlyFolderIsRefusedBeforeWriting) {
  if (geteuid() == 0) GTEST_SKIP() << "root writes into read-only folders";
  ScratchDir dir;
  std::filesystem::create_directory(dir / "ro");
  ASSERT_EQ(chmod((dir / "ro").c_str(), 0555), 0);
  EXPECT_THROW(io::check_output_path(dir / "ro/out.bin"), std::runtime_error);
  chmod((dir / "ro").c_str(), 0755);
}

// ---- through the binary -------------------------------------------------------------------------------------

test::ChildExit run_tessera_args(const std::vector<std::string>& args, const Child::Options& options = {}) {
  Child child(args, options);
  return child.wait(60s);
}

std::vector<std::string> logits_to(const std::string& out) {
  return {"logits", "-m", test::stories_model(), "-p", "Once upon a time", "-t", "1", "--out", out};
}

TEST(OutputFilesCli, LogitsRefusesSpecialFilesAndLeavesThemAsTheyWere) {
  ScratchDir dir;
  std::filesystem::create_directory(dir / "folder");
  ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0644), 0);
  make_socket(dir / "socket");
  std::filesystem::create_symlink("/dev/null", dir / "null-link");
  std::filesystem::create_symlink("fifo", dir / "fifo-link");
  for (const char* name : {"folder", "fifo", "socket", "null-link", "fifo-link"}) {
    const test::ChildExit r = run_tessera_args(logits_to(dir / name));
    EXPECT_EQ(r.code, 1) << name << ": " << r.err;
    EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << name << ": " << r.err;
    EXPECT_EQ(r.err.find("wrote"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(S_ISDIR(mode_of(dir / "folder")));
  EXPECT_TRUE(S_ISFIFO(mode_of(dir / "fifo")));
  EXPECT_TRUE(S_ISSOCK(mode_of(dir / "socket")));
  EXPECT_TRUE(S_ISLNK(mode_of(dir / "null-link")));
  EXPECT_TRUE(S_ISLNK(mode_of(dir / "fifo-link")));
  EXPECT_EQ(dir.names(), (std::vector<std::string>{"fifo", "fifo-link", "folder", "null-link", "socket"}));
}

TEST(OutputFilesCli, LogitsRefusesADeviceNode) {
  ScratchDir dir;
  // A device node of our own (the same device as /dev/null), so that a failure would not touch the system's.
  if (mknod((dir / "null").c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
    GTEST_SKIP() << "mknod needs privileges here: " << std::strerror(errno);
  }
  const test::ChildExit r = run_tessera_args(logits_to(dir / "null"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("is a character device"), std::string::npos) << r.err;
  EXPECT_TRUE(S_ISCHR(mode_of(dir / "null")));
}

TEST(OutputFilesCli, LogitsAndQuantizeFollowASymlinkAndKeepIt) {
  ScratchDir dir;
  test::write_whole_file(dir / "logits.real", "old");
  std::filesystem::create_symlink("logits.real", dir / "logits.link");
  const test::ChildExit logits = run_tessera_args(logits_to(dir / "logits.link"));
  ASSERT_EQ(logits.code, 0) << logits.err;
  EXPECT_TRUE(S_ISLNK(mode_of(dir / "logits.link")));
  EXPECT_EQ(std::filesystem::file_size(dir / "logits.real"), 5u * 512u * sizeof(float));  // 5 tokens x vocab 512

  test::write_whole_file(dir / "model.real", "old");
  std::filesystem::create_symlink(dir / "model.real", dir / "model.link");
  const test::ChildExit quantize =
      run_tessera_args({"quantize", test::stories_model(), dir / "model.link", "Q8_0", "--threads", "1"});
  ASSERT_EQ(quantize.code, 0) << quantize.err;
  EXPECT_TRUE(S_ISLNK(mode_of(dir / "model.link")));
  EXPECT_EQ(gguf::File::open(dir / "model.real").tensors().size(), 48u);
  EXPECT_EQ(dir.names(), (std::vector<std::string>{"logits.link", "logits.real", "model.link", "model.real"}));
}

TEST(OutputFilesCli, TheOutputPathIsCheckedBeforeTheWork) {
  ScratchDir dir;
  std::filesystem::create_directory(dir / "folder");
  // synth writes a progress line per tensor it makes: none may appear before the refusal.
  for (const std::string& out : {dir / "folder", std::string(), dir / "no-such-folder/model.gguf"}) {
    const test::ChildExit r = run_tessera_args({"synth", "--preset", "tiny", "--type", "F32", "-o", out});
    EXPECT_EQ(r.code, 1) << "'" << out << "': " << r.err;
    EXPECT_EQ(r.err.find("[   1/"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(out.empty() ? "the output path is empty" : "cannot write"), std::string::npos) << r.err;
  }
  const test::ChildExit q = run_tessera_args({"quantize", test::stories_model(), dir / "folder", "Q8_0"});
  EXPECT_EQ(q.code, 1) << q.err;
  EXPECT_EQ(q.err.find("[   1/"), std::string::npos) << q.err;
  EXPECT_EQ(dir.names(), std::vector<std::string>{"folder"});
}

// A file size limit makes the write fail part way (EFBIG), as a full disk does (ENOSPC): the error is named, the
// old file stays and no temporary file is left.
TEST(OutputFilesCli, AWriteThatFailsPartWayKeepsTheOldFileAndLeavesNoTemporary) {
  ScratchDir dir;
  test::write_whole_file(dir / "model.gguf", "old");
  test::write_whole_file(dir / "synth.gguf", "old");
  Child::Options limited;
  limited.before_exec = [] {
    const rlimit limit{64 << 10, 64 << 10};
    setrlimit(RLIMIT_FSIZE, &limit);
  };
  const test::ChildExit q =
      run_tessera_args({"quantize", test::stories_model(), dir / "model.gguf", "Q8_0", "--threads", "1"}, limited);
  EXPECT_EQ(q.code, 1) << q.err;
  EXPECT_NE(q.err.find("cannot write '" + dir / "model.gguf" + "': File too large"), std::string::npos) << q.err;
  const test::ChildExit s =
      run_tessera_args({"synth", "--preset", "tiny", "--type", "F32", "-t", "1", "-o", dir / "synth.gguf"}, limited);
  EXPECT_EQ(s.code, 1) << s.err;
  EXPECT_NE(s.err.find("File too large"), std::string::npos) << s.err;
  EXPECT_EQ(test::read_whole_file(dir / "model.gguf"), "old");
  EXPECT_EQ(test::read_whole_file(dir / "synth.gguf"), "old");
  EXPECT_EQ(dir.names(), (std::vector<std::string>{"model.gguf", "synth.gguf"}));
}

// SIGTERM and SIGINT while a large model is being written: the temporary file goes with the process.
TEST(OutputFilesCli, ASignalDuringAWriteRemovesTheTemporaryFile) {
  for (const int sig : {SIGTERM, SIGINT}) {
    ScratchDir dir;
    Child child({"synth", "--preset", "tinyllama-1.1b", "--type", "F16", "-t", "1", "-o", dir / "big.gguf"});
    const bool temp_seen = child.read_until([&] { return dir.names().size() == 1; }, 30s);
    ASSERT_TRUE(temp_seen) << child.err();
    EXPECT_NE(dir.names()[0].find("big.gguf.tmp."), std::string::npos) << dir.names()[0];
    child.send(sig);
    const test::ChildExit r = child.wait(30s);
    EXPECT_TRUE(r.exited) << r.err;
    EXPECT_EQ(r.code, 128 + sig) << r.err;
    EXPECT_TRUE(dir.names().empty()) << dir.names()[0];
  }
}

}  // namespace
}  // namespace tessera
