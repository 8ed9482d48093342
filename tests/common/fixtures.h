// Where the tests find ../shared/fixtures and the tessera binary.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace tessera::test {

// The fixtures folder: $TESSERA_FIXTURES, else the one CMake was configured with (TESSERA_FIXTURES_DIR).
inline std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("TESSERA_FIXTURES"); env && *env) return env;
  return TESSERA_FIXTURES_DIR;
}

inline std::filesystem::path fixture(const std::string& relative) { return fixtures_dir() / relative; }

// The tessera executable built alongside the tests, for tests of the command line.
inline std::string tessera_binary() { return TESSERA_BINARY; }

}  // namespace tessera::test
