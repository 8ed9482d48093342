// Reading a text input named on the command line (a prompt file, a text to tokenize) in one piece, never blocking
// on or reading without limit from something that is not a file.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tessera::io {

inline constexpr size_t kMaxTextFileBytes = size_t{1} << 30;     // a regular file (the tokenizer's own limit)
inline constexpr size_t kMaxTextStreamBytes = size_t{64} << 20;  // standard input, a pipe, FIFO or character device

// The whole content of `path`: a regular file up to kMaxTextFileBytes; "-" (standard input), a FIFO or a character
// device such as /dev/stdin up to kMaxTextStreamBytes (a FIFO waits for its writer, as `cat` does); a directory,
// socket or block device is refused. Throws std::runtime_error naming `what` ("prompt file"), the path and the
// reason, with the errno's text for I/O errors.
std::string read_text_input(const std::string& path, std::string_view what);

}  // namespace tessera::io
