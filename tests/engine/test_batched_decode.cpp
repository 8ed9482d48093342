// Sequences of different lengths run together in one step give each the logits it gets alone, on fixture models of
// every weight type. With the interleaved kernels (quant/interleaved.h) they are bit for bit the same: a token's
// arithmetic (its activations' quantization, the kernels' order of sums, its attention) does not depend on the
// other tokens of the step. The kernels in GGUF layout keep more accumulators for one or two tokens than for more,
// so there a batched token's logits differ in the last bits, and its quantized activations may round the other way:
// within the fixtures' tolerance for quantized models, with the same greedy tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/interleaved.h"

namespace tessera {
namespace {

constexpr int kSequences = 19;  // two passes of 8 tokens and a tail in the kernels, and more than 16
constexpr int kSteps = 6;       // decode steps after the prompts
constexpr double kTolerance = 0.05;

struct Case {
  std::string name;  // tiny-llama-<name>.gguf
  bool interleaved;  // every matrix has an interleaved kernel (where the CPU has them)
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

engine::EngineOptions options() {
  engine::EngineOptions o;
  o.n_threads = 2;
  o.n_ctx = 128;
  o.n_kv_tokens = kSequences * 128;
  o.prefix_caching = false;
  return o;
}

std::vector<int32_t> prompt_of(int i, int n_vocab) {
  std::vector<int32_t> p(static_cast<size_t>(1 + (i * 7) % 37));
  for (size_t k = 0; k < p.size(); ++k) p[k] = static_cast<int32_t>(3 + (i * 131 + k * 17) % (n_vocab - 3));
  return p;
}

// Sequences still running at decode step s: fewer as steps go on, so that the step sizes cross 16 and 8.
int running_at(int s) { return std::max(1, kSequences - 3 * s); }

int32_t greedy(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// The gap between the largest logit and the next.
double top_gap(const std::vector<float>& logits) {
  std::vector<float> sorted = logits;
  std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
  return sorted[0] - sorted[1];
}

class BatchedDecode : public ::testing::TestWithParam<Case> {};

TEST_P(BatchedDecode, EachSequenceGetsTheLogitsItGetsAlone) {
  const gguf::File file = gguf::File::open(test::fixture("models/tiny-llama-" + GetParam().name + ".gguf"));
  const bool exact = GetParam().interleaved && quant::interleaved_available(GgmlType::Q4_K, 16, 256);
  engine::Engine alone(file, options());
  const int V = alone.n_vocab();

  // Alone: each sequence's prompt, then greedy decoding one token at a time; the logits of every step.
  std::vector<std::vector<std::vector<float>>> expected(kSequences);
  for (int i = 0; i < kSequences; ++i) {
    const int32_t seq = alone.new_sequence();
    std::span<const float> l = alone.eval(seq, prompt_of(i, V));
    expected[i].emplace_back(l.begin(), l.end());
    for (int s = 0; s < kSteps && i < running_at(s); ++s) {
      const int32_t token = greedy(expected[i].back());
      l = alone.eval(seq, std::span(&token, 1));
      expected[i].emplace_back(l.begin(), l.end());
    }
    alone.free_sequence(seq);
  }

  // Together: all prompts in one step, then steps of one token of every running sequence, each the token its
  // sequence chose alone.
  engine::Engine together(file, options());
  std::vector<int32_t> seqs;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<engine::Engine::Chunk> chunks;
  for (int i = 0; i < kSequences; ++i) {
    seqs.push_back(together.new_sequence());
    prompts.push_back(prompt_of(i, V));
  }
  for (int i = 0; i < kSequences; ++i) chunks.push_back({seqs[i], prompts[i], LogitsWanted::Last});
  std::span<const float> logits = together.step(chunks);
  std::vector<int32_t> next(kSequences);
  for (int s = 0;; ++s) {
    const int n = s == 0 ? kSequences : running_at(s - 1);
    ASSERT_EQ(logits.size(), static_cast<size_t>(n) * V);
    for (int i = 0; i < n; ++i) {
      const std::vector<float>& want = expected[i][s];
      const std::vector<float> got(logits.begin() + static_cast<ptrdiff_t>(i) * V,
                                   logits.begin() + static_cast<ptrdiff_t>(i + 1) * V);
      const std::string where = "sequence " + std::to_string(i) + " (prompt of " + std::to_string(prompts[i].size()) +
                                "), step " + std::to_string(s) + " of " + std::to_string(n) + " sequences";
      for (int v = 0; v < V; ++v) {
        if (exact) {
          ASSERT_EQ(got[v], want[v]) << where << ", vocab " << v;
        } else {
          ASSERT_NEAR(got[v], want[v], kTolerance) << where << ", vocab " << v;
        }
      }
      next[i] = greedy(want);
      if (top_gap(want) > 2 * kTolerance) {
        EXPECT_EQ(greedy(got), next[i]) << where;
      }
    }
    if (s == kSteps) break;
    chunks.clear();
    for (int i = 0; i < running_at(s); ++i) chunks.push_back({seqs[i], std::span(&next[i], 1), LogitsWanted::Last});
    logits = together.step(chunks);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchedDecode,
                         ::testing::Values(Case{"Q4_K_M", true}, Case{"Q5_K_M", true}, Case{"Q6_K", true},
                                           Case{"Q8_0", true}, Case{"Q4_0", true}, Case{"Q5_0", false},
                                           Case{"Q5_1", false}, Case{"Q4_1", false}, Case{"Q3_K_M", false},
                                           Case{"Q2_K", false}, Case{"F16", false}, Case{"F32", false}));

}  // namespace
}  // namespace tessera
