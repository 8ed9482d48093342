// Reading the fixtures' llama.cpp goldens (.golden.json, .golden-incr.json, .logits.f32).
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fixtures.h"

namespace tessera::test {

inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path.string());
  return nlohmann::json::parse(f);
}

inline std::vector<float> read_f32(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw std::runtime_error("cannot open " + path.string());
  const auto size = static_cast<size_t>(f.tellg());
  std::vector<float> v(size / sizeof(float));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

// Largest |a - b| over n values, with where it happened, for failure messages that explain themselves.
struct MaxDiff {
  double value = 0;
  size_t index = 0;
};
inline MaxDiff max_abs_diff(const float* a, const float* b, size_t n) {
  MaxDiff d;
  for (size_t i = 0; i < n; ++i) {
    const double diff = std::abs(static_cast<double>(a[i]) - b[i]);
    if (diff > d.value) d = {diff, i};
  }
  return d;
}

}  // namespace tessera::test
