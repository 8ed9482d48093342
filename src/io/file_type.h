// Names of the kinds of file a path can be, for messages such as "'x' is a FIFO, not a regular file".
#pragma once

#include <sys/types.h>

#include <string_view>

namespace tessera::io {

// "a regular file", "a directory", "a FIFO", "a socket", "a character device", "a block device",
// "a symbolic link" or "a special file", from a stat st_mode.
std::string_view file_type_name(mode_t mode);

}  // namespace tessera::io
