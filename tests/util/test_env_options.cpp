// util::env_options: the environment variables the library reads, their defaults, and one clear error for a
// value a variable does not take, in the parser and through the binary.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <map>
#include <stdexcept>
#include <string>

#include "common/run_tessera.h"
#include "util/env_options.h"

namespace tessera {
namespace {

util::EnvOptions parse(const std::map<std::string, std::string>& env) {
  return util::parse_env_options([&](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  });
}

std::string error_of(const std::map<std::string, std::string>& env) {
  try {
    parse(env);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "no error";
}

TEST(EnvOptions, DefaultsWhenUnsetOrEmpty) {
  for (const std::map<std::string, std::string>& env :
       {std::map<std::string, std::string>{},
        {{"TESSERA_SIMD", ""}, {"TESSERA_PREFETCH", ""}, {"TESSERA_CUDA_GRAPHS", ""}, {"TESSERA_DECODE_HEADS", ""}}}) {
    const util::EnvOptions o = parse(env);
    EXPECT_EQ(o.simd, "");
    EXPECT_EQ(o.prefetch, "");
    EXPECT_TRUE(o.cuda_graphs);
    EXPECT_EQ(o.cuda_decode_heads, 2);
  }
}

TEST(EnvOptions, ReadsEveryVariable) {
  const util::EnvOptions o = parse({{"TESSERA_SIMD", "avx2"},
                                    {"TESSERA_PREFETCH", "nta"},
                                    {"TESSERA_CUDA_GRAPHS", "0"},
                                    {"TESSERA_DECODE_HEADS", "8"}});
  EXPECT_EQ(o.simd, "avx2");
  EXPECT_EQ(o.prefetch, "nta");
  EXPECT_FALSE(o.cuda_graphs);
  EXPECT_EQ(o.cuda_decode_heads, 8);
  EXPECT_TRUE(parse({{"TESSERA_CUDA_GRAPHS", "1"}}).cuda_graphs);
  EXPECT_EQ(parse({{"TESSERA_DECODE_HEADS", "1"}}).cuda_decode_heads, 1);
}

TEST(EnvOptions, AValueAVariableDoesNotTakeIsNamed) {
  EXPECT_EQ(error_of({{"TESSERA_SIMD", "avx3"}}), "TESSERA_SIMD='avx3' is not one of scalar, avx2, avx512");
  EXPECT_EQ(error_of({{"TESSERA_PREFETCH", "L1"}}), "TESSERA_PREFETCH='L1' is not one of none, nta, l1");
  EXPECT_EQ(error_of({{"TESSERA_CUDA_GRAPHS", "off"}}), "TESSERA_CUDA_GRAPHS='off' is not one of 0, 1");
  EXPECT_EQ(error_of({{"TESSERA_DECODE_HEADS", "3"}}), "TESSERA_DECODE_HEADS='3' is not one of 1, 2, 4, 8");
}

// The binary inherits the variable: a run that reaches the kernels stops with one line and exit code 1.
TEST(EnvOptions, BadValueIsAOneLineErrorFromTheBinary) {
  ASSERT_EQ(::setenv("TESSERA_SIMD", "sse9", 1), 0);
  const test::CommandResult r =
      test::run_tessera("run -m " + test::fixture("trained/stories260K.gguf").string() + " -p Once -n 2 -t 1");
  ::unsetenv("TESSERA_SIMD");
  EXPECT_EQ(r.exit_code, 1);
  // The error is the last line (the model summary comes before it).
  const std::string line = "error: TESSERA_SIMD='sse9' is not one of scalar, avx2, avx512\n";
  EXPECT_TRUE(r.err.ends_with(line) && (r.err.size() == line.size() || r.err[r.err.size() - line.size() - 1] == '\n'))
      << r.err;
}

}  // namespace
}  // namespace tessera
