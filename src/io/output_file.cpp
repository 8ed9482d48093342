#include "io/output_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "io/file_type.h"

namespace tessera::io {
namespace {

constexpr size_t kBufferBytes = size_t{1} << 20;
constexpr int kMaxSymlinkHops = 40;  // as the kernel's own limit

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw std::runtime_error(fmt::format("cannot write '{}': {}{}", path, what, std::strerror(err)));
}

// The temporary files that exist right now, for remove_temp_files(). Fixed storage, so that a signal handler
// reads it without allocating; a slot's path is complete before `live` is set.
struct TempSlot {
  std::atomic<bool> claimed{false};
  std::atomic<bool> live{false};
  char path[PATH_MAX];
};
constexpr int kTempSlots = 64;
TempSlot g_temp_slots[kTempSlots];

int claim_slot(const std::string& path) {
  if (path.size() >= PATH_MAX) return -1;
  for (int i = 0; i < kTempSlots; ++i) {
    bool expected = false;
    if (g_temp_slots[i].claimed.compare_exchange_strong(expected, true)) {
      std::memcpy(g_temp_slots[i].path, path.c_str(), path.size() + 1);
      return i;
    }
  }
  return -1;
}

void release_slot(int slot) {
  g_temp_slots[slot].live.store(false);
  g_temp_slots[slot].claimed.store(false);
}

// Holds SIGINT and SIGTERM back while a temporary file is created, renamed or removed together with its registry
// entry, so a handler never sees a file that exists but is not listed (it would stay behind) or a listed name that
// is not ours yet.
class BlockTerminationSignals {
 public:
  BlockTerminationSignals() {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old_);
  }
  ~BlockTerminationSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

// `path` with every symlink in its last component followed (a dangling link gives the path it points to).
std::filesystem::path follow_symlinks(const std::string& path) {
  std::filesystem::path p = path;
  for (int hop = 0; hop < kMaxSymlinkHops; ++hop) {
    struct stat st {};
    if (lstat(p.c_str(), &st) != 0) {
      if (errno == ENOENT) return p;  // a new file; a missing folder is reported by the caller
      fail(path, "", errno);
    }
    if (!S_ISLNK(st.st_mode)) return p;
    char target[PATH_MAX];
    const ssize_t n = readlink(p.c_str(), target, sizeof target - 1);
    if (n < 0) fail(path, fmt::format("cannot read the symlink '{}': ", p.string()), errno);
    const std::filesystem::path link(std::string(target, static_cast<size_t>(n)));
    p = link.is_absolute() ? link : p.parent_path() / link;
  }
  fail(path, "", ELOOP);
}

}  // namespace

std::string check_output_path(const std::string& path) {
  if (path.empty()) throw std::runtime_error("the output path is empty");
  const std::filesystem::path target = follow_symlinks(path);
  const std::string via = target.string() == path ? "" : fmt::format(" (the symlink's target '{}')", target.string());
  struct stat st {};
  if (stat(target.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      throw std::runtime_error(fmt::format("cannot write '{}'{}: it is {}, not a regular file; refusing to replace it",
                                           path, via, file_type_name(st.st_mode)));
    }
  } else if (errno != ENOENT) {
    fail(path, "", errno);
  }
  const std::filesystem::path folder = target.has_parent_path() ? target.parent_path() : ".";
  if (stat(folder.c_str(), &st) != 0) fail(path, fmt::format("folder '{}': ", folder.string()), errno);
  if (!S_ISDIR(st.st_mode)) fail(path, fmt::format("folder '{}': ", folder.string()), ENOTDIR);
  if (access(folder.c_str(), W_OK | X_OK) != 0) fail(path, fmt::format("folder '{}': ", folder.string()), errno);
  return target.string();
}

OutputFile::OutputFile(const std::string& path) : path_(path), target_(check_output_path(path)) {
  struct stat existing {};
  const bool replaces = stat(target_.c_str(), &existing) == 0;
  static std::atomic<unsigned> counter{0};
  {
    BlockTerminationSignals hold;
    for (;;) {
      temp_path_ = fmt::format("{}.tmp.{}.{}", target_, ::getpid(), counter++);
      fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) break;
      if (errno != EEXIST) fail(path_, "cannot create a temporary file beside it: ", errno);
    }
    temp_slot_ = claim_slot(temp_path_);
    if (temp_slot_ >= 0) g_temp_slots[temp_slot_].live.store(true);
  }
  if (temp_slot_ < 0) {
    discard();
    throw std::runtime_error(fmt::format("cannot write '{}': too many output files open at once", path_));
  }
  // A replaced file keeps its permissions.
  if (replaces && fchmod(fd_, existing.st_mode & 07777) != 0) {
    const int err = errno;
    discard();
    fail(path_, "", err);
  }
  buffer_.reserve(kBufferBytes);
}

OutputFile::~OutputFile() {
  if (!committed_) discard();
}

void OutputFile::discard() noexcept {
  BlockTerminationSignals hold;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
  if (temp_slot_ >= 0) release_slot(temp_slot_);
  temp_slot_ = -1;
}

void OutputFile::flush_buffer() {
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      discard();
      fail(path_, "", err);
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
}

void OutputFile::write(const void* data, size_t size) {
  if (fd_ < 0) throw std::logic_error(fmt::format("'{}' was already committed or discarded", path_));
  const auto* bytes = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const size_t n = std::min(size, kBufferBytes - buffer_.size());
    buffer_.insert(buffer_.end(), bytes, bytes + n);
    bytes += n;
    size -= n;
    if (buffer_.size() == kBufferBytes) flush_buffer();
  }
}

void OutputFile::commit() {
  if (fd_ < 0) throw std::logic_error(fmt::format("'{}' was already committed or discarded", path_));
  flush_buffer();
  auto fail_and_discard = [&](int err) {
    discard();
    fail(path_, "", err);
  };
  if (fsync(fd_) != 0) fail_and_discard(errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_and_discard(errno);
  {
    BlockTerminationSignals hold;
    if (std::rename(temp_path_.c_str(), target_.c_str()) != 0) fail_and_discard(errno);
    release_slot(temp_slot_);
    temp_slot_ = -1;
    temp_path_.clear();
    committed_ = true;
  }
  // The rename is durable only once the folder's entry is on disk.
  const std::filesystem::path folder = std::filesystem::path(target_).has_parent_path()
                                           ? std::filesystem::path(target_).parent_path()
                                           : std::filesystem::path(".");
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) fail(path_, "cannot open its folder to sync it: ", errno);
  const int synced = fsync(dir);
  const int err = errno;
  ::close(dir);
  // Some file systems cannot sync a folder (EINVAL); their renames are as durable as they get.
  if (synced != 0 && err != EINVAL) fail(path_, "syncing its folder: ", err);
}

void remove_temp_files() noexcept {
  for (TempSlot& slot : g_temp_slots) {
    if (slot.live.load()) ::unlink(slot.path);
  }
}

}  // namespace tessera::io
