// Writing an output file without clobbering anything. Only a regular file is ever replaced (a symlink to one is
// followed: the file it names is replaced and the link stays); a directory, FIFO, socket or device at the path is
// refused. The data goes to a temporary file with a unique name beside the target; commit() flushes, fsyncs and
// renames it over the target, then fsyncs the folder, so a reader sees the old file or the whole new one. The
// temporary file is removed on every error path, by the destructor, and by remove_temp_files() from a signal
// handler. Every I/O error names the path and the errno's text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tessera::io {

// The regular file that writing `path` would replace or create (the target of a symlink at `path`, followed).
// Throws std::runtime_error, naming the path and why, when it cannot be an output: empty, a directory, FIFO,
// socket or device, a symlink loop, or a folder that does not exist or cannot be written. Call it before
// starting work whose result goes to `path`.
std::string check_output_path(const std::string& path);

class OutputFile {
 public:
  // Checks `path` (check_output_path) and creates the temporary file.
  explicit OutputFile(const std::string& path);
  ~OutputFile();  // removes the temporary file unless commit() succeeded
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::span<const uint8_t> bytes) { write(bytes.data(), bytes.size()); }
  // Flush, fsync, rename over the target, fsync the folder. After a failure the temporary file is gone.
  void commit();

  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  void discard() noexcept;

  std::string path_;    // as given (for messages)
  std::string target_;  // what is replaced: path_ with symlinks followed
  std::string temp_path_;
  int fd_ = -1;
  int temp_slot_ = -1;  // this file's entry in the registry remove_temp_files() reads
  std::vector<uint8_t> buffer_;
  bool committed_ = false;
};

// Unlinks every temporary file an OutputFile holds at this moment. Async-signal-safe: for SIGINT, SIGTERM and
// SIGBUS handlers that end the process.
void remove_temp_files() noexcept;

}  // namespace tessera::io
