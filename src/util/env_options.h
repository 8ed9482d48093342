// The environment variables the library reads, read once and checked together. They are for tests, benchmarks
// and diagnosis: a normal run needs none. docs/ENVIRONMENT.md lists them for users.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace tessera::util {

struct EnvOptions {
  // TESSERA_SIMD = scalar | avx2 | avx512: the highest instruction set the CPU kernels may use
  // (quant::active_simd_level); one above what the CPU has means what it has. Empty (unset): the CPU's best. The
  // tests run each kernel path with it.
  std::string simd;
  // TESSERA_PREFETCH = none | nta | l1: how the interleaved decode kernels ask for weight tiles ahead of use
  // (quant::active_weight_prefetch). Empty (unset): chosen by processor (quant::weight_prefetch_for_cpu).
  std::string prefetch;
  // TESSERA_CUDA_GRAPHS = 1 | 0: whether the CUDA backend replays decode steps as captured CUDA graphs. 0 launches
  // every kernel on its own, for profilers that time kernels one by one. Default 1.
  bool cuda_graphs = true;
  // TESSERA_DECODE_HEADS = 1 | 2 | 4 | 8: the most query heads one block of the CUDA decode attention kernel
  // takes (fewer where the heads per KV head do not divide by it). Default 2.
  int cuda_decode_heads = 2;
};

// The options, read from the environment on first use. Throws std::runtime_error naming the variable and the
// values it takes when one is set to anything else.
const EnvOptions& env_options();

// What env_options does with a variable lookup of its own (the tests give it a table).
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvOptions parse_env_options(const EnvLookup& lookup);

}  // namespace tessera::util
