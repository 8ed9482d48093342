#include "util/env_options.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace tessera::util {
namespace {

// The variable's value, "" when it is unset or empty; one of `allowed` or an error naming them.
std::string read(const EnvLookup& lookup, const std::string& name, const std::vector<std::string>& allowed) {
  const std::string value = lookup(name).value_or("");
  if (value.empty() || std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return value;
  std::string list;
  for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw std::runtime_error(name + "='" + value + "' is not one of " + list);
}

}  // namespace

EnvOptions parse_env_options(const EnvLookup& lookup) {
  EnvOptions o;
  o.simd = read(lookup, "TESSERA_SIMD", {"scalar", "avx2", "avx512"});
  o.prefetch = read(lookup, "TESSERA_PREFETCH", {"none", "nta", "l1"});
  o.cuda_graphs = read(lookup, "TESSERA_CUDA_GRAPHS", {"0", "1"}) != "0";
  const std::string heads = read(lookup, "TESSERA_DECODE_HEADS", {"1", "2", "4", "8"});
  if (!heads.empty()) o.cuda_decode_heads = std::stoi(heads);
  return o;
}

const EnvOptions& env_options() {
  static const EnvOptions options = parse_env_options([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (!value) return std::nullopt;
    return value;
  });
  return options;
}

}  // namespace tessera::util
