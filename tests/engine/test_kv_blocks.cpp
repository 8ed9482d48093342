#include <gtest/gtest.h>

#include <set>

#include "engine/kv_blocks.h"

namespace tessera::engine {
namespace {

TEST(KvBlocks, PositionsMapToBlocksOfTheirOwnSequence) {
  KvBlocks kv(64, 16);
  const int32_t a = kv.add_sequence(), b = kv.add_sequence();
  kv.reserve(a, 20);  // two blocks
  kv.reserve(b, 5);   // one block
  kv.advance(a, 20);
  kv.advance(b, 5);
  EXPECT_EQ(kv.length(a), 20);
  EXPECT_EQ(kv.length(b), 5);
  ASSERT_EQ(kv.slots(a).size(), 32u);
  ASSERT_EQ(kv.slots(b).size(), 16u);
  std::set<int32_t> seen;
  for (int32_t s : kv.slots(a)) seen.insert(s);
  for (int32_t s : kv.slots(b)) EXPECT_FALSE(seen.count(s)) << "slot " << s << " is shared";
  // Positions inside a block are consecutive slots.
  EXPECT_EQ(kv.slots(a)[1], kv.slots(a)[0] + 1);
  EXPECT_EQ(kv.slots(a)[15] % 16, 15);
  EXPECT_EQ(kv.free_slots(), 16);
}

TEST(KvBlocks, FullContextThrowsAndChangesNothing) {
  KvBlocks kv(32, 16);
  const int32_t a = kv.add_sequence();
  kv.reserve(a, 30);
  kv.advance(a, 30);
  EXPECT_THROW(kv.reserve(a, 3), ContextFull);
  EXPECT_EQ(kv.length(a), 30);
  EXPECT_EQ(kv.slots(a).size(), 32u);
  kv.reserve(a, 2);  // still fits the last block
  kv.advance(a, 2);
  EXPECT_EQ(kv.length(a), 32);
}

TEST(KvBlocks, RemovedSequenceReturnsItsBlocks) {
  KvBlocks kv(32, 16);
  const int32_t a = kv.add_sequence();
  kv.reserve(a, 32);
  EXPECT_EQ(kv.free_slots(), 0);
  kv.remove_sequence(a);
  EXPECT_EQ(kv.free_slots(), 32);
  EXPECT_THROW(kv.length(a), std::invalid_argument);
  const int32_t b = kv.add_sequence();
  EXPECT_NO_THROW(kv.reserve(b, 32));
}

TEST(KvBlocks, RejectsSizesThatAreNotWholeBlocks) {
  EXPECT_THROW(KvBlocks(30, 16), std::invalid_argument);
  EXPECT_THROW(KvBlocks(32, 0), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::engine
