#include "io/input_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "io/file_type.h"

namespace tessera::io {
namespace {

// Reads fd to its end, failing once more than `limit` bytes arrive.
std::string read_all(int fd, size_t limit, std::string_view what, const std::string& path) {
  std::string out;
  char chunk[65536];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n == 0) return out;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("cannot read {} '{}': {}", what, path, std::strerror(errno)));
    }
    if (out.size() + static_cast<size_t>(n) > limit) {
      throw std::runtime_error(
          fmt::format("{} '{}' holds more than {} MiB, the most that is read", what, path, limit >> 20));
    }
    out.append(chunk, static_cast<size_t>(n));
  }
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string read_text_input(const std::string& path, std::string_view what) {
  if (path.empty()) throw std::runtime_error(fmt::format("the {} path is empty", what));
  if (path == "-") return read_all(STDIN_FILENO, kMaxTextStreamBytes, what, "standard input");
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    throw std::runtime_error(fmt::format("cannot read {} '{}': {}", what, path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) {
    throw std::runtime_error(fmt::format("{} '{}' is {}, not a file", what, path, file_type_name(st.st_mode)));
  }
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > kMaxTextFileBytes) {
    throw std::runtime_error(fmt::format("{} '{}' has {} bytes; the most that is read is {} MiB", what, path,
                                         st.st_size, kMaxTextFileBytes >> 20));
  }
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    throw std::runtime_error(fmt::format("cannot read {} '{}': {}", what, path, std::strerror(errno)));
  }
  // The file may have been replaced since stat(): judge what was opened.
  if (fstat(fd.get(), &st) != 0) {
    throw std::runtime_error(fmt::format("cannot read {} '{}': {}", what, path, std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) throw std::runtime_error(fmt::format("{} '{}' is a directory, not a file", what, path));
  return read_all(fd.get(), S_ISREG(st.st_mode) ? kMaxTextFileBytes : kMaxTextStreamBytes, what, path);
}

}  // namespace tessera::io
