#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <vector>

#include "engine/kv_blocks.h"

namespace tessera::engine {
namespace {

std::vector<int32_t> iota_tokens(int n, int first = 100) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

// Appends tokens to a sequence the way the engine does: reserve, then record.
void fill(KvBlocks& kv, int32_t seq, const std::vector<int32_t>& tokens) {
  kv.reserve(seq, static_cast<int32_t>(tokens.size()));
  kv.append(seq, tokens);
}

TEST(KvBlocks, SequencesGetBlocksOfTheirOwn) {
  KvBlocks kv(64, 16);
  const int32_t a = kv.add_sequence(), b = kv.add_sequence();
  fill(kv, a, iota_tokens(20));
  fill(kv, b, iota_tokens(5, 900));
  EXPECT_EQ(kv.length(a), 20);
  EXPECT_EQ(kv.length(b), 5);
  ASSERT_EQ(kv.blocks(a).size(), 2u);
  ASSERT_EQ(kv.blocks(b).size(), 1u);
  const std::set<int32_t> all = {kv.blocks(a)[0], kv.blocks(a)[1], kv.blocks(b)[0]};
  EXPECT_EQ(all.size(), 3u);
  EXPECT_EQ(kv.available_blocks(), 1);
  EXPECT_EQ(kv.used_blocks(), 3);
  EXPECT_EQ(std::vector<int32_t>(kv.tokens(b).begin(), kv.tokens(b).end()), iota_tokens(5, 900));
}

TEST(KvBlocks, FullCacheThrowsAndChangesNothing) {
  KvBlocks kv(32, 16);
  const int32_t a = kv.add_sequence();
  fill(kv, a, iota_tokens(30));
  EXPECT_EQ(kv.blocks_needed(a, 3), 1);
  EXPECT_THROW(kv.reserve(a, 3), ContextFull);
  EXPECT_EQ(kv.length(a), 30);
  EXPECT_EQ(kv.blocks(a).size(), 2u);
  EXPECT_EQ(kv.blocks_needed(a, 2), 0);  // still fits the last block
  fill(kv, a, {7, 8});
  EXPECT_EQ(kv.length(a), 32);
  EXPECT_THROW(kv.append(a, std::vector<int32_t>{9}), std::logic_error);  // never reserved
}

TEST(KvBlocks, RemovedSequenceWithoutPrefixCachingReturnsItsBlocks) {
  KvBlocks kv(32, 16);
  kv.set_prefix_caching(false);
  const int32_t a = kv.add_sequence();
  fill(kv, a, iota_tokens(32));
  EXPECT_EQ(kv.available_blocks(), 0);
  kv.remove_sequence(a);
  EXPECT_EQ(kv.available_blocks(), 2);
  EXPECT_EQ(kv.cached_blocks(), 0);
  EXPECT_THROW(kv.length(a), std::invalid_argument);
  const int32_t b = kv.add_sequence();
  EXPECT_EQ(kv.attach_prefix(b, iota_tokens(32), 32).n_tokens, 0);  // nothing is shared without the cache
}

TEST(KvBlocks, RejectsSizesThatAreNotWholeBlocks) {
  EXPECT_THROW(KvBlocks(30, 16), std::invalid_argument);
  EXPECT_THROW(KvBlocks(32, 0), std::invalid_argument);
}

// A running sequence's full blocks are shared at once; its partly filled last block is not (it is still written).
TEST(KvBlocks, FullBlocksOfARunningSequenceAreShared) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  const std::vector<int32_t> prompt = iota_tokens(40);
  fill(kv, a, prompt);
  const int32_t b = kv.add_sequence();
  const KvBlocks::PrefixHit hit = kv.attach_prefix(b, prompt, 39);
  EXPECT_EQ(hit.n_tokens, 32);
  EXPECT_FALSE(hit.copy);
  EXPECT_EQ(kv.blocks(b)[0], kv.blocks(a)[0]);
  EXPECT_EQ(kv.blocks(b)[1], kv.blocks(a)[1]);
  EXPECT_EQ(kv.length(b), 32);
  EXPECT_EQ(kv.used_blocks(), 3);  // a's two full blocks (shared) and a's last
}

// After a sequence ends, a new one with a common prefix takes its full blocks and a copy of the block where the
// common prefix ends; tokens after the divergence are not reused.
TEST(KvBlocks, FinishedSequencePrefixIsReusedWithCopyOnWrite) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  std::vector<int32_t> first = iota_tokens(45);
  fill(kv, a, first);
  const std::vector<int32_t> a_blocks(kv.blocks(a).begin(), kv.blocks(a).end());
  kv.remove_sequence(a);
  EXPECT_EQ(kv.cached_blocks(), 3);
  EXPECT_EQ(kv.used_blocks(), 0);

  std::vector<int32_t> second = first;
  second[37] = 7;  // diverges inside the third block
  second.push_back(8);
  const int32_t b = kv.add_sequence();
  const KvBlocks::PrefixHit hit = kv.attach_prefix(b, second, static_cast<int32_t>(second.size()) - 1);
  EXPECT_EQ(hit.n_tokens, 37);
  ASSERT_TRUE(hit.copy);
  EXPECT_EQ(hit.copy->from, a_blocks[2]);
  EXPECT_NE(hit.copy->to, a_blocks[2]);
  ASSERT_EQ(kv.blocks(b).size(), 3u);
  EXPECT_EQ(kv.blocks(b)[0], a_blocks[0]);
  EXPECT_EQ(kv.blocks(b)[1], a_blocks[1]);
  EXPECT_EQ(kv.blocks(b)[2], hit.copy->to);
  // b writes on from position 37 into its copy; the cached block keeps a's tokens for others.
  fill(kv, b, std::vector<int32_t>(second.begin() + 37, second.end()));
  const int32_t c = kv.add_sequence();
  EXPECT_EQ(kv.attach_prefix(c, first, static_cast<int32_t>(first.size())).n_tokens, 45);
}

TEST(KvBlocks, PrefixNeverCoversMoreThanAsked) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  const std::vector<int32_t> prompt = iota_tokens(32);
  fill(kv, a, prompt);
  kv.remove_sequence(a);
  const int32_t b = kv.add_sequence();
  // The whole prompt is cached, but its last token must be evaluated again for its logits.
  const KvBlocks::PrefixHit hit = kv.attach_prefix(b, prompt, 31);
  EXPECT_EQ(hit.n_tokens, 31);
  ASSERT_TRUE(hit.copy);  // the second block is taken as a copy: b writes position 31 into it
}

// Cached blocks are evicted least recently used first, and later blocks of a prefix before earlier ones.
TEST(KvBlocks, CachedBlocksAreEvictedWhenSpaceIsNeeded) {
  KvBlocks kv(64, 16);  // 4 blocks
  const int32_t a = kv.add_sequence();
  const std::vector<int32_t> old_prompt = iota_tokens(48);
  fill(kv, a, old_prompt);
  kv.remove_sequence(a);
  EXPECT_EQ(kv.cached_blocks(), 3);
  const int32_t b = kv.add_sequence();
  fill(kv, b, iota_tokens(32, 5000));  // one free block, then the oldest cached one (old_prompt's last)
  EXPECT_EQ(kv.cached_blocks(), 2);
  const int32_t c = kv.add_sequence();
  EXPECT_EQ(kv.attach_prefix(c, old_prompt, 48).n_tokens, 32);  // its first two blocks survived
}

TEST(KvBlocks, ForkSharesFullBlocksAndCopiesThePartialOne) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  fill(kv, a, iota_tokens(20));
  const auto [b, copy] = kv.fork(a);
  EXPECT_EQ(kv.length(b), 20);
  EXPECT_EQ(kv.blocks(b)[0], kv.blocks(a)[0]);
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->from, kv.blocks(a)[1]);
  EXPECT_EQ(copy->to, kv.blocks(b)[1]);
  kv.remove_sequence(a);
  EXPECT_EQ(kv.used_blocks(), 2);  // the shared block is still b's
  kv.remove_sequence(b);
  EXPECT_EQ(kv.used_blocks(), 0);
}

// Sliding window: the blocks wholly before the first visible position go back, except those holding sinks;
// a block another sequence shares stays with it.
TEST(KvBlocks, DropBlocksBeforeKeepsSinksAndSharedBlocks) {
  KvBlocks kv(128, 16);
  kv.set_prefix_caching(false);
  const int32_t a = kv.add_sequence();
  fill(kv, a, iota_tokens(100));  // blocks 0..6
  const std::vector<int32_t> held(kv.blocks(a).begin(), kv.blocks(a).end());
  const auto [b, copy] = kv.fork(a);  // shares a's six full blocks
  EXPECT_EQ(kv.available_blocks(), 0);
  kv.drop_blocks_before(a, 70, 20);  // sinks in blocks 0 and 1; blocks 2, 3 end before 70; block 4 holds 64..79
  EXPECT_EQ(std::vector<int32_t>(kv.blocks(a).begin(), kv.blocks(a).end()),
            (std::vector<int32_t>{held[0], held[1], -1, -1, held[4], held[5], held[6]}));
  EXPECT_EQ(kv.available_blocks(), 0);  // b still holds blocks 2 and 3
  kv.drop_blocks_before(b, 70, 0);
  EXPECT_EQ(kv.available_blocks(), 2);  // blocks 2 and 3; blocks 0 and 1 are still a's sinks
  EXPECT_EQ(kv.blocks(b)[0], -1);
  EXPECT_EQ(kv.blocks(b)[1], -1);
  kv.drop_blocks_before(a, 70, 20);     // nothing more to drop
  EXPECT_EQ(kv.available_blocks(), 2);
  kv.remove_sequence(a);
  kv.remove_sequence(b);
  EXPECT_EQ(kv.available_blocks(), 8);
  EXPECT_EQ(kv.used_blocks(), 0);
}

// A context shift with `keep` on a block boundary only moves blocks in the table; the moved keys are those of the
// later blocks, which belong to positions n_discard earlier now.
TEST(KvBlocks, ShiftOnABlockBoundaryMovesBlocks) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  const std::vector<int32_t> tokens = iota_tokens(100);
  fill(kv, a, tokens);
  const std::vector<int32_t> held(kv.blocks(a).begin(), kv.blocks(a).end());
  const int32_t available = kv.available_blocks();
  const KvBlocks::ShiftWork work = kv.shift(a, 16, 32);
  EXPECT_TRUE(work.block_copies.empty());
  EXPECT_TRUE(work.slot_copies.empty());
  EXPECT_EQ(kv.length(a), 68);
  EXPECT_EQ(std::vector<int32_t>(kv.blocks(a).begin(), kv.blocks(a).end()),
            (std::vector<int32_t>{held[0], held[3], held[4], held[5], held[6]}));
  std::vector<int32_t> want_tokens(tokens.begin(), tokens.begin() + 16);
  want_tokens.insert(want_tokens.end(), tokens.begin() + 48, tokens.end());
  EXPECT_EQ(std::vector<int32_t>(kv.tokens(a).begin(), kv.tokens(a).end()), want_tokens);
  ASSERT_EQ(work.rotated_slots.size(), 52u);  // positions 16..67
  EXPECT_EQ(work.rotated_slots.front(), held[3] * 16);
  EXPECT_EQ(work.rotated_slots.back(), held[6] * 16 + 3);
  EXPECT_EQ(kv.available_blocks(), available + 2);
}

// With `keep` inside a block, that block keeps its first positions and takes the moved ones' slots by copy from
// the block n_discard later; shared blocks that change are copied first, the sequence's blocks are never
// registered again, and the blocks before `keep` stay shared.
TEST(KvBlocks, ShiftInsideABlockCopiesSlotsAndSharedBlocks) {
  KvBlocks kv(256, 16);
  const int32_t a = kv.add_sequence();
  const std::vector<int32_t> tokens = iota_tokens(90);
  fill(kv, a, tokens);
  const std::vector<int32_t> held(kv.blocks(a).begin(), kv.blocks(a).end());  // 6 blocks
  const int32_t other = kv.add_sequence();                                      // shares a's first 4 blocks
  ASSERT_EQ(kv.attach_prefix(other, tokens, 64).n_tokens, 64);
  const KvBlocks::ShiftWork work = kv.shift(a, 20, 32);  // drops 20..51; 52.. move to 20..
  // Block 1 (positions 16..31), which other shares, is copied before a changes it; old blocks 4 and 5, which
  // become blocks 2 and 3, are a's own.
  ASSERT_EQ(work.block_copies.size(), 1u);
  EXPECT_EQ(work.block_copies[0].from, held[1]);
  const int32_t split = work.block_copies[0].to;
  EXPECT_EQ(kv.blocks(a)[0], held[0]);  // before keep: still shared
  EXPECT_EQ(kv.blocks(a)[1], split);
  EXPECT_EQ(kv.blocks(a)[2], held[4]);
  EXPECT_EQ(kv.blocks(a)[3], held[5]);
  EXPECT_EQ(kv.blocks(other)[1], held[1]);  // other keeps the original
  // Old positions 52..63 (block 3, offsets 4..15) go to new positions 20..31 (the split block, same offsets).
  ASSERT_EQ(work.slot_copies.size(), 12u);
  for (int o = 4; o < 16; ++o) {
    EXPECT_EQ(work.slot_copies[o - 4].from, held[3] * 16 + o);
    EXPECT_EQ(work.slot_copies[o - 4].to, split * 16 + o);
  }
  EXPECT_EQ(kv.length(a), 58);
  EXPECT_EQ(work.rotated_slots.size(), 38u);
  EXPECT_EQ(work.rotated_slots.front(), split * 16 + 4);
  // None of a's blocks is found by its tokens any more, though a fills two more: a new sequence with a's tokens
  // after the shift gets the untouched first block, then a copy of the original block 1 for the 4 positions a
  // kept of it (which other still holds), and nothing after.
  fill(kv, a, iota_tokens(30, 7000));
  const std::vector<int32_t> now(kv.tokens(a).begin(), kv.tokens(a).end());
  kv.remove_sequence(a);
  const int32_t c = kv.add_sequence();
  const KvBlocks::PrefixHit hit = kv.attach_prefix(c, now, static_cast<int32_t>(now.size()));
  EXPECT_EQ(hit.n_tokens, 20);
  ASSERT_TRUE(hit.copy);
  EXPECT_EQ(hit.copy->from, held[1]);
}

TEST(KvBlocks, ShiftRejectsBadRanges) {
  KvBlocks kv(128, 16);
  const int32_t a = kv.add_sequence();
  fill(kv, a, iota_tokens(50));
  EXPECT_THROW(kv.shift(a, 4, 20), std::invalid_argument);   // not whole blocks
  EXPECT_THROW(kv.shift(a, 20, 32), std::invalid_argument);  // past the end
  EXPECT_THROW(kv.shift(a, 4, 0), std::invalid_argument);
  EXPECT_EQ(kv.length(a), 50);
}

}  // namespace
}  // namespace tessera::engine
