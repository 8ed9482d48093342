// Facts about the machine's processors, read from /proc and /sys.
#pragma once

#include <string>

namespace tessera::util {

// The processor's model name and the thread count, e.g. "AMD EPYC 9R14 (2 threads)"; "unknown CPU" where the
// name cannot be read.
std::string cpu_device_name(int n_threads);

// Physical cores of this machine (logical CPUs / SMT siblings), at least 1.
int physical_core_count();

}  // namespace tessera::util
