// The request lifecycle and the continuous-batching scheduler on the trained stories260K model: requests run
// together get the tokens they get alone, through prompt chunking, preemption, the prefix cache and cancellation.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera::engine {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest()
      : file_(gguf::File::open(test::fixture("trained/stories260K.gguf").string())),
        tokenizer_(tokenizer::Tokenizer::from_gguf(file_)) {}

  std::unique_ptr<Engine> make_engine(int n_ctx, int n_kv_tokens, bool prefix_caching = true) {
    EngineOptions o;
    o.n_threads = 1;
    o.n_ctx = n_ctx;
    o.n_kv_tokens = n_kv_tokens;
    o.prefix_caching = prefix_caching;
    return std::make_unique<Engine>(file_, o);
  }

  std::shared_ptr<Request> request(const std::string& prompt, int max_tokens, Request::OnText on_text = {}) {
    RequestOptions o;
    o.prompt = tokenizer_.encode(prompt, true, false);
    o.max_tokens = max_tokens;
    o.sampling.temperature = 0;
    return std::make_shared<Request>(std::move(o), tokenizer_, std::move(on_text));
  }

  static void run_all(Scheduler& scheduler, int max_steps = 10000) {
    for (int i = 0; i < max_steps && scheduler.step(); ++i) {
    }
    ASSERT_EQ(scheduler.n_running() + scheduler.n_waiting(), 0u) << "the scheduler did not finish in time";
  }

  // Each prompt run alone on a fresh engine without the prefix cache.
  std::vector<std::vector<int32_t>> alone(const std::vector<std::string>& prompts, int max_tokens) {
    std::vector<std::vector<int32_t>> out;
    for (const std::string& p : prompts) {
      auto engine = make_engine(256, 256, false);
      Scheduler scheduler(*engine, {1, 512});
      auto r = request(p, max_tokens);
      scheduler.add(r);
      run_all(scheduler);
      out.push_back(r->generated());
    }
    return out;
  }

  gguf::File file_;
  tokenizer::Tokenizer tokenizer_;
};

const std::vector<std::string> kPrompts = {
    "Once upon a time",
    "Lily and Tom went to the park to play with a red ball",
    "The cat",
    "One day, a little boy named Tim found a big box in his room. He opened it and",
    "Sue liked to sing",
    "There was a dog who",
};

TEST_F(SchedulerTest, ConcurrentRequestsGetTheTokensTheyGetAlone) {
  const auto want = alone(kPrompts, 24);
  auto engine = make_engine(256, 1024);
  // A small step budget: the long prompts go in chunks beside the others' decode tokens.
  Scheduler scheduler(*engine, {8, 12});
  std::vector<std::shared_ptr<Request>> requests;
  for (const std::string& p : kPrompts) {
    requests.push_back(request(p, 24));
    scheduler.add(requests.back());
  }
  run_all(scheduler);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(requests[i]->generated(), want[i]) << kPrompts[i];
    EXPECT_EQ(requests[i]->finish_reason(), FinishReason::MaxTokens);
  }
  EXPECT_EQ(engine->kv().used_blocks(), 0);
}

TEST_F(SchedulerTest, ReportsTheSequencesInEachStep) {
  auto engine = make_engine(256, 1024);
  Scheduler scheduler(*engine, {4, 512});  // four run at once; the other two wait for the first to finish
  for (const std::string& p : kPrompts) scheduler.add(request(p, 3));
  std::vector<size_t> per_step;
  while (scheduler.step()) per_step.push_back(scheduler.last_step_sequences());
  // Prompts and first tokens, then two decode steps, for each group of requests.
  EXPECT_EQ(per_step, (std::vector<size_t>{4, 4, 4, 2, 2, 2}));
  EXPECT_EQ(scheduler.last_step_sequences(), 0u);
}

TEST_F(SchedulerTest, PreemptedRequestsResumeWithTheSameOutput) {
  const auto want = alone(kPrompts, 40);
  // 96 slots: six sequences of up to 60 tokens cannot all hold their blocks at once.
  auto engine = make_engine(128, 96);
  Scheduler scheduler(*engine, {6, 64});
  std::vector<std::shared_ptr<Request>> requests;
  for (const std::string& p : kPrompts) {
    requests.push_back(request(p, 40));
    scheduler.add(requests.back());
  }
  run_all(scheduler);
  int preemptions = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(requests[i]->generated(), want[i]) << kPrompts[i];
    preemptions += requests[i]->timings().preemptions;
  }
  EXPECT_GT(preemptions, 0) << "the cache was meant to be too small for all of them";
  EXPECT_EQ(engine->kv().used_blocks(), 0);
}

TEST_F(SchedulerTest, PrefixCacheHitsGiveTheSameOutput) {
  auto engine = make_engine(256, 512);
  Scheduler scheduler(*engine, {4, 512});
  const std::string prompt = kPrompts[3];
  auto first = request(prompt, 16);
  scheduler.add(first);
  run_all(scheduler);
  EXPECT_EQ(first->timings().cached_prompt_tokens, 0);
  auto second = request(prompt, 16);
  scheduler.add(second);
  run_all(scheduler);
  const int32_t n_prompt = static_cast<int32_t>(second->options().prompt.size());
  EXPECT_EQ(second->timings().cached_prompt_tokens, n_prompt - 1);  // all but the last, whose logits are needed
  EXPECT_EQ(second->generated(), first->generated());
  // A longer conversation that starts with the first one's prompt and reply reuses both.
  auto third = request(prompt + first->text() + " Then", 8);
  scheduler.add(third);
  run_all(scheduler);
  EXPECT_GE(third->timings().cached_prompt_tokens, n_prompt);
}

TEST_F(SchedulerTest, StopStringsEndTheTextAndAreNeverReleased) {
  // Greedy, the story goes on ", there was a little girl named Lily. She loved to play outside".
  std::string streamed;
  RequestOptions o;
  o.prompt = tokenizer_.encode("Once upon a time", true, false);
  o.max_tokens = 40;
  o.sampling.temperature = 0;
  o.stop = {"named L", "zebra"};
  auto r = std::make_shared<Request>(o, tokenizer_,
                                     [&](const Request&, std::string_view text, auto) { streamed += text; });
  auto engine = make_engine(256, 256);
  Scheduler scheduler(*engine, {1, 512});
  scheduler.add(r);
  run_all(scheduler);
  EXPECT_EQ(r->finish_reason(), FinishReason::StopString);
  EXPECT_EQ(r->text(), ", there was a little girl ");
  EXPECT_EQ(streamed, r->text());
}

TEST_F(SchedulerTest, CancelledRequestEndsAndFreesItsBlocks) {
  auto engine = make_engine(256, 256);
  Scheduler scheduler(*engine, {2, 512});
  int pieces = 0;
  auto cancelled = request("Once upon a time", 100, [&](const Request& r, std::string_view, auto) {
    if (++pieces == 3) const_cast<Request&>(r).cancel();
  });
  auto other = request("The cat", 10);
  scheduler.add(cancelled);
  scheduler.add(other);
  run_all(scheduler);
  EXPECT_EQ(cancelled->finish_reason(), FinishReason::Cancelled);
  EXPECT_LE(cancelled->generated().size(), 4u);
  EXPECT_EQ(other->finish_reason(), FinishReason::MaxTokens);
  EXPECT_EQ(other->generated().size(), 10u);
  EXPECT_EQ(engine->kv().used_blocks(), 0);
}

TEST_F(SchedulerTest, FullContextEndsOnlyThatRequest) {
  auto engine = make_engine(32, 256);
  Scheduler scheduler(*engine, {2, 512});
  auto long_one = request("Once upon a time", 100);
  auto short_one = request("The cat", 5);
  scheduler.add(long_one);
  scheduler.add(short_one);
  run_all(scheduler);
  EXPECT_EQ(long_one->finish_reason(), FinishReason::ContextFull);
  EXPECT_EQ(long_one->tokens().size(), 33u);  // the last sampled token needs no slot
  EXPECT_EQ(short_one->finish_reason(), FinishReason::MaxTokens);
}

TEST_F(SchedulerTest, RequestsArrivingLaterJoinRunningOnes) {
  auto engine = make_engine(256, 512);
  Scheduler scheduler(*engine, {4, 512});
  auto first = request("Once upon a time", 60);
  scheduler.add(first);
  for (int i = 0; i < 5; ++i) scheduler.step();
  auto second = request("The cat", 5);
  scheduler.add(second);
  for (int i = 0; i < 8 && !second->finished(); ++i) scheduler.step();
  EXPECT_TRUE(second->finished());
  EXPECT_FALSE(first->finished()) << "the second request waited for the first";
  run_all(scheduler);
  EXPECT_EQ(first->generated(), alone({"Once upon a time"}, 60)[0]);
}

TEST_F(SchedulerTest, GroupSharesItsPrompt) {
  auto engine = make_engine(256, 512);
  Scheduler scheduler(*engine, {4, 512});
  std::vector<std::shared_ptr<Request>> group;
  for (int i = 0; i < 3; ++i) {
    RequestOptions o;
    o.prompt = tokenizer_.encode(kPrompts[3], true, false);
    o.max_tokens = 12;
    o.sampling.temperature = 1.0f;
    o.sampling.seed = 100 + i;
    group.push_back(std::make_shared<Request>(o, tokenizer_));
  }
  scheduler.add_group(group);
  run_all(scheduler);
  EXPECT_EQ(group[0]->timings().cached_prompt_tokens, 0);
  for (int i = 1; i < 3; ++i) EXPECT_GE(group[i]->timings().cached_prompt_tokens, 16) << "choice " << i;
  for (const auto& r : group) EXPECT_EQ(r->generated().size(), 12u);
}

TEST_F(SchedulerTest, PromptsThatCannotFitAreRefusedAtOnce) {
  auto engine = make_engine(16, 256);
  Scheduler scheduler(*engine, {1, 512});
  EXPECT_THROW(scheduler.add(request(kPrompts[3], 4)), std::invalid_argument);
  EXPECT_EQ(scheduler.n_waiting(), 0u);
}

}  // namespace
}  // namespace tessera::engine
