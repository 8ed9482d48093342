#include "engine/kv_blocks.h"

#include <algorithm>
#include <string>

namespace tessera::engine {
namespace {

constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;  // the "prefix" before a sequence's first token

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = parent;
  for (int32_t t : tokens) h = mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + 0x9e3779b97f4a7c15ull));
  return h;
}

}  // namespace

KvBlocks::KvBlocks(int32_t n_slots, int32_t block_size) : block_size_(block_size) {
  if (block_size <= 0 || n_slots <= 0 || n_slots % block_size != 0) {
    throw std::invalid_argument("KV cache of " + std::to_string(n_slots) + " slots cannot be cut into blocks of " +
                                std::to_string(block_size));
  }
  blocks_.resize(n_slots / block_size);
  // Hand out low blocks first: the free list is a stack with block 0 on top.
  for (int32_t b = n_blocks() - 1; b >= 0; --b) free_.push_back(b);
}

void KvBlocks::set_prefix_caching(bool on) {
  prefix_caching_ = on;
  if (on) return;
  while (!evictable_.empty()) {
    const int32_t b = evictable_.begin()->second;
    evictable_.erase(evictable_.begin());
    unregister_block(b);
    free_.push_back(b);
  }
}

int32_t KvBlocks::add_sequence() {
  const int32_t id = next_id_++;
  sequences_.emplace(id, Sequence{{}, {}, 0, kRootHash, false});
  return id;
}

void KvBlocks::remove_sequence(int32_t seq) {
  Sequence& s = get(seq);
  const int32_t n_full = s.length / block_size_;
  // The partly filled last block stays findable by the tokens it holds.
  if (s.length % block_size_ != 0 && prefix_caching_ && !s.shifted) {
    const int32_t b = s.blocks[n_full];
    if (!blocks_[b].registered && blocks_[b].ref == 1) {
      register_block(b, s.prefix_hash, std::span(s.tokens).subspan(static_cast<size_t>(n_full) * block_size_), false);
    }
  }
  // Last block first, so that a prefix's later blocks are evicted before its earlier ones.
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) {
    if (*it >= 0) release_block(*it);
  }
  sequences_.erase(seq);
}

int32_t KvBlocks::blocks_needed(int32_t seq, int32_t n) const {
  const Sequence& s = get(seq);
  const int64_t needed = (static_cast<int64_t>(s.length) + n + block_size_ - 1) / block_size_;
  return static_cast<int32_t>(std::max<int64_t>(0, needed - static_cast<int64_t>(s.blocks.size())));
}

void KvBlocks::reserve(int32_t seq, int32_t n) {
  const int32_t new_blocks = blocks_needed(seq, n);
  if (new_blocks > available_blocks()) {
    const Sequence& s = get(seq);
    throw ContextFull("the KV cache is full: " + std::to_string(static_cast<int64_t>(s.length) + n) +
                      " tokens of this sequence do not fit beside the others in the " + std::to_string(n_slots()) +
                      "-token cache");
  }
  Sequence& s = get(seq);
  for (int32_t i = 0; i < new_blocks; ++i) s.blocks.push_back(take_block());
}

void KvBlocks::append(int32_t seq, std::span<const int32_t> tokens) {
  Sequence& s = get(seq);
  if (static_cast<int64_t>(s.length) + static_cast<int64_t>(tokens.size()) >
      static_cast<int64_t>(s.blocks.size()) * block_size_) {
    throw std::logic_error("KvBlocks::append past the reserved capacity");
  }
  for (int32_t t : tokens) {
    s.tokens.push_back(t);
    if (++s.length % block_size_ != 0) continue;
    // A block just filled: from now on nobody writes into it, so others may read it.
    const std::span<const int32_t> block_tokens = std::span(s.tokens).subspan(s.tokens.size() - block_size_);
    const uint64_t parent = s.prefix_hash;
    s.prefix_hash = chain_hash(parent, block_tokens);
    if (prefix_caching_ && !s.shifted) register_block(s.blocks[s.length / block_size_ - 1], parent, block_tokens, true);
  }
}

KvBlocks::PrefixHit KvBlocks::attach_prefix(int32_t seq, std::span<const int32_t> tokens, int32_t max_tokens) {
  Sequence& s = get(seq);
  if (s.length != 0 || !s.blocks.empty()) throw std::logic_error("KvBlocks::attach_prefix on a non-empty sequence");
  PrefixHit hit;
  if (!prefix_caching_) return hit;
  max_tokens = std::min<int32_t>(max_tokens, static_cast<int32_t>(tokens.size()));
  auto acquire = [&](int32_t b) {
    if (blocks_[b].ref++ == 0) evictable_.erase({blocks_[b].last_use, b});
  };
  // Whole blocks, one hash look-up each.
  while (s.length + block_size_ <= max_tokens) {
    const std::span<const int32_t> chunk = tokens.subspan(s.length, block_size_);
    const uint64_t h = chain_hash(s.prefix_hash, chunk);
    const auto it = full_by_hash_.find(h);
    if (it == full_by_hash_.end() || !std::equal(chunk.begin(), chunk.end(), blocks_[it->second].tokens.begin())) break;
    acquire(it->second);
    s.blocks.push_back(it->second);
    s.tokens.insert(s.tokens.end(), chunk.begin(), chunk.end());
    s.length += block_size_;
    s.prefix_hash = h;
  }
  hit.n_tokens = s.length;
  // Then the cached block after this prefix that shares the most leading tokens with the rest, copied.
  const std::span<const int32_t> rest = tokens.subspan(s.length, max_tokens - s.length);
  int32_t best = -1;
  size_t best_common = 0;
  const auto [first, last] = by_parent_.equal_range(s.prefix_hash);
  for (auto it = first; it != last; ++it) {
    const std::vector<int32_t>& cached = blocks_[it->second].tokens;
    const size_t n = std::min(cached.size(), rest.size());
    const size_t common = std::mismatch(cached.begin(), cached.begin() + n, rest.begin()).first - cached.begin();
    if (common > best_common) {
      best_common = common;
      best = it->second;
    }
  }
  if (best < 0) return hit;
  acquire(best);  // so that taking the copy's block cannot evict it
  if (available_blocks() > 0) {
    const int32_t copy = take_block();
    s.blocks.push_back(copy);
    s.tokens.insert(s.tokens.end(), rest.begin(), rest.begin() + best_common);
    s.length += static_cast<int32_t>(best_common);
    hit.n_tokens = s.length;
    hit.copy = BlockCopy{best, copy};
  }
  release_block(best);
  return hit;
}

std::pair<int32_t, std::optional<KvBlocks::BlockCopy>> KvBlocks::fork(int32_t seq) {
  const int32_t n_full = get(seq).length / block_size_;
  const bool partial = get(seq).length % block_size_ != 0;
  if (partial && available_blocks() == 0) throw ContextFull("the KV cache is full: no block left to fork a sequence");
  const int32_t id = add_sequence();
  Sequence& s = get(seq);
  Sequence& t = get(id);
  t.tokens = s.tokens;
  t.length = s.length;
  t.prefix_hash = s.prefix_hash;
  t.shifted = s.shifted;
  for (int32_t i = 0; i < n_full; ++i) {
    if (s.blocks[i] >= 0) ++blocks_[s.blocks[i]].ref;
    t.blocks.push_back(s.blocks[i]);
  }
  std::optional<BlockCopy> copy;
  if (partial) {
    t.blocks.push_back(take_block());
    copy = BlockCopy{s.blocks[n_full], t.blocks.back()};
  }
  return {id, copy};
}

void KvBlocks::drop_blocks_before(int32_t seq, int32_t first_position, int32_t n_sink) {
  Sequence& s = get(seq);
  const int32_t first_free = (n_sink + block_size_ - 1) / block_size_;  // blocks before it hold sinks
  const int32_t end = std::min<int32_t>(first_position / block_size_, static_cast<int32_t>(s.blocks.size()));
  for (int32_t i = first_free; i < end; ++i) {
    if (s.blocks[i] < 0) continue;
    release_block(s.blocks[i]);
    s.blocks[i] = -1;
  }
}

KvBlocks::ShiftWork KvBlocks::shift(int32_t seq, int32_t keep, int32_t n_discard) {
  Sequence& s = get(seq);
  const int32_t bs = block_size_;
  if (keep < 0 || n_discard <= 0 || n_discard % bs != 0 || static_cast<int64_t>(keep) + n_discard > s.length) {
    throw std::invalid_argument("a context shift cannot drop positions [" + std::to_string(keep) + ", " +
                                std::to_string(static_cast<int64_t>(keep) + n_discard) + ") of a sequence of " +
                                std::to_string(s.length) + " in blocks of " + std::to_string(bs));
  }
  const int32_t d = n_discard / bs, boundary = keep / bs, split = keep % bs;
  const int32_t n_old = static_cast<int32_t>(s.blocks.size());
  // The new table: the blocks before `keep`'s, the split block itself (it keeps its first `split` positions), then
  // the blocks d later. Every block from `boundary` on changes (rotated keys, copied slots): it must be this
  // sequence's alone.
  const int32_t moved_from = boundary + (split != 0 ? 1 : 0);
  std::vector<int32_t> table(s.blocks.begin(), s.blocks.begin() + moved_from);
  for (int32_t i = moved_from + d; i < n_old; ++i) table.push_back(s.blocks[i]);
  int32_t copies_needed = 0;
  for (size_t i = boundary; i < table.size(); ++i) copies_needed += table[i] >= 0 && blocks_[table[i]].ref > 1;
  if (copies_needed > available_blocks()) {
    throw ContextFull("the KV cache is full: a context shift needs " + std::to_string(copies_needed) +
                      " blocks to copy shared blocks into");
  }
  if (split != 0 && s.blocks[boundary] < 0) {
    throw std::logic_error("KvBlocks::shift: the block of the kept positions was freed");
  }

  ShiftWork work;
  for (size_t i = boundary; i < table.size(); ++i) {
    const int32_t b = table[i];
    if (b < 0) continue;
    if (blocks_[b].ref > 1) {
      table[i] = take_block();
      work.block_copies.push_back({b, table[i]});
      release_block(b);
    } else {
      unregister_block(b);
    }
  }
  // The moved positions of the block that `keep` splits: from the block d later (its first `split` positions
  // are dropped ones), where that block is still held.
  if (split != 0 && boundary + d < n_old && s.blocks[boundary + d] >= 0) {
    const int32_t from = s.blocks[boundary + d], to = table[boundary];
    for (int32_t o = split; o < bs && static_cast<int64_t>(boundary + d) * bs + o < s.length; ++o) {
      work.slot_copies.push_back({from * bs + o, to * bs + o});
    }
  }
  // The dropped blocks go back last, so that no copy above lands in a block it reads from.
  for (int32_t i = moved_from; i < moved_from + d && i < n_old; ++i) {
    if (s.blocks[i] >= 0) release_block(s.blocks[i]);
  }
  s.blocks = std::move(table);
  s.tokens.erase(s.tokens.begin() + keep, s.tokens.begin() + keep + n_discard);
  s.length -= n_discard;
  s.shifted = true;
  for (int32_t p = keep; p < s.length; ++p) {
    const int32_t b = s.blocks[p / bs];
    if (b >= 0) work.rotated_slots.push_back(b * bs + p % bs);
  }
  return work;
}

int32_t KvBlocks::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!evictable_.empty()) {
    b = evictable_.begin()->second;
    evictable_.erase(evictable_.begin());
    unregister_block(b);
  } else {
    throw std::logic_error("KvBlocks: no block to take");
  }
  blocks_[b].ref = 1;
  return b;
}

void KvBlocks::release_block(int32_t b) {
  Block& block = blocks_[b];
  if (--block.ref > 0) return;
  if (block.registered) {
    block.last_use = ++clock_;
    evictable_.insert({block.last_use, b});
  } else {
    free_.push_back(b);
  }
}

void KvBlocks::register_block(int32_t b, uint64_t parent, std::span<const int32_t> tokens, bool full) {
  Block& block = blocks_[b];
  if (full) {
    // The same content may be cached in another block already; then this one is not findable.
    if (!full_by_hash_.emplace(chain_hash(parent, tokens), b).second) return;
  }
  block.hash = full ? chain_hash(parent, tokens) : 0;
  block.registered = true;
  block.parent = parent;
  block.tokens.assign(tokens.begin(), tokens.end());
  by_parent_.emplace(parent, b);
}

void KvBlocks::unregister_block(int32_t b) {
  Block& block = blocks_[b];
  if (!block.registered) return;
  if (const auto it = full_by_hash_.find(block.hash);
      static_cast<int32_t>(block.tokens.size()) == block_size_ && it != full_by_hash_.end() && it->second == b) {
    full_by_hash_.erase(it);
  }
  const auto [first, last] = by_parent_.equal_range(block.parent);
  for (auto it = first; it != last; ++it) {
    if (it->second == b) {
      by_parent_.erase(it);
      break;
    }
  }
  block.registered = false;
  block.tokens.clear();
}

KvBlocks::Sequence& KvBlocks::get(int32_t seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) throw std::invalid_argument("unknown sequence " + std::to_string(seq));
  return it->second;
}

const KvBlocks::Sequence& KvBlocks::get(int32_t seq) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) throw std::invalid_argument("unknown sequence " + std::to_string(seq));
  return it->second;
}

}  // namespace tessera::engine
