#include "cli/stdout_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace tessera::cli {

OutputError::OutputError(int err)
    : std::runtime_error(std::string("cannot write to standard output: ") + std::strerror(err)), err_(err) {}

void write_stdout(std::string_view text) {
  if (text.empty()) return;
  errno = 0;
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) throw OutputError(errno ? errno : EIO);
}

void flush_stdout() {
  errno = 0;
  const bool failed = std::fflush(stdout) != 0 || std::ferror(stdout);
  if (failed) throw OutputError(errno ? errno : EIO);
}

}  // namespace tessera::cli
