// Standard output with every write checked: a write or flush that fails throws OutputError with the errno's text
// ("cannot write to standard output: No space left on device"), so a full disk, a closed stdout or a dead pipe
// stops the work. main turns it into exit 1, without a message for a broken pipe (the reader left on purpose).
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <stdexcept>
#include <string_view>
#include <utility>

namespace tessera::cli {

class OutputError : public std::runtime_error {
 public:
  explicit OutputError(int err);
  bool broken_pipe() const { return err_ == EPIPE; }

 private:
  int err_;
};

void write_stdout(std::string_view text);  // buffered as stdout is; throws OutputError
void flush_stdout();                       // throws OutputError, also for an earlier write that failed unnoticed

template <class... Args>
void print_stdout(fmt::format_string<Args...> format, Args&&... args) {
  write_stdout(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace tessera::cli
