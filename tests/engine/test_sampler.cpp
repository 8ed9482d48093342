#include <gtest/gtest.h>

#include <map>

#include "engine/sampler.h"

namespace tessera::engine {
namespace {

TEST(Sampler, GreedyPicksTheLargestLogitAndLowestIdOnTies) {
  SamplerParams p;
  p.temperature = 0;
  Sampler s(p);
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.sample(logits, {}), 1);
  EXPECT_EQ(argmax(logits), 1);
}

TEST(Sampler, SameSeedGivesSameDraws) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 42;
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.3f;
  Sampler a(p), b(p);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 100; ++i) {
    da.push_back(a.sample(logits, {}));
    db.push_back(b.sample(logits, {}));
  }
  EXPECT_EQ(da, db);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> dc;
  for (int i = 0; i < 100; ++i) dc.push_back(c.sample(logits, {}));
  EXPECT_NE(da, dc);
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplerParams p;
  p.temperature = 5.0f;  // flat: without top-k every token would appear
  p.top_k = 2;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  Sampler s(p);
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, 0.5f};
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) ++counts[s.sample(logits, {})];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[3], 0);
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 0.5f;
  p.min_p = 0.0f;
  Sampler s(p);
  // Token 0 alone has probability ~0.84 > top_p, so it is the only survivor.
  const std::vector<float> logits = {3.0f, 1.0f, 0.0f, 0.0f};
  for (int i = 0; i < 500; ++i) ASSERT_EQ(s.sample(logits, {}), 0);

  p.top_p = 1.0f;
  p.min_p = 0.2f;  // token 1 has e^-2 = 0.135 of token 0's probability: dropped
  Sampler m(p);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(m.sample(logits, {}), 0);
}

TEST(Sampler, RepetitionPenaltyChangesTheGreedyChoice) {
  SamplerParams p;
  p.temperature = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  const std::vector<float> logits = {1.0f, 1.5f, 0.2f};
  const std::vector<int32_t> history = {1, 1};
  EXPECT_EQ(s.sample(logits, history), 0);  // 1.5 / 2 = 0.75 < 1.0
  p.repeat_penalty = 1.0f;
  p.presence_penalty = 0.6f;
  Sampler pres(p);
  EXPECT_EQ(pres.sample(logits, history), 0);  // 1.5 - 0.6 = 0.9 < 1.0
  p.presence_penalty = 0.0f;
  p.frequency_penalty = 0.2f;
  Sampler freq(p);
  EXPECT_EQ(freq.sample(logits, history), 1);  // 1.5 - 2 x 0.2 = 1.1 > 1.0
}

TEST(Sampler, InvalidParametersAreRefused) {
  SamplerParams p;
  p.temperature = -1;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = SamplerParams{};
  p.top_p = 0;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = SamplerParams{};
  p.min_p = 1.5f;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = SamplerParams{};
  p.top_k = -3;
  EXPECT_THROW(p.validate(), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::engine
