// Bookkeeping of the KV cache: n_slots token slots handed out to sequences in blocks of block_size slots. A
// sequence's position p lives in slot blocks[p / block_size] * block_size + p % block_size. Blocks (not one
// contiguous range per sequence) let many sequences share one cache without fragmentation, and let sequences
// share the blocks of a common prefix.
//
// The prefix cache: a block's content is identified by a hash of every token up to and including its own. A
// full block is registered under that hash as soon as it fills, and stays readable by any number of sequences
// (reference-counted; nobody writes into a full block). When a sequence is removed, its registered blocks and its
// partly filled last block stay cached, unreferenced, until their slots are needed (least recently used first).
// A new sequence takes the cached blocks of the longest prefix of its tokens; where that prefix ends inside a
// cached block, the block is copied (copy on write), since the new sequence will write the rest of it.
//
// Sliding-window attention frees a sequence's blocks that no later token sees (their table entries become -1);
// a freed block that was registered stays in the prefix cache like any other, since its keys and values still
// follow from the tokens before it, and one that another sequence holds stays with it. A context shift (shift())
// moves a sequence's later tokens to earlier positions: from then on its keys and values no longer follow from
// its tokens, so none of its blocks is registered again, and the blocks it changes are its own (copied where
// shared) and unregistered.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tessera::engine {

class ContextFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class KvBlocks {
 public:
  KvBlocks(int32_t n_slots, int32_t block_size);

  int32_t n_slots() const { return n_blocks() * block_size_; }
  int32_t n_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t block_size() const { return block_size_; }
  // Blocks held by at least one sequence; blocks kept only for the prefix cache; blocks a sequence can get
  // (free or cached).
  int32_t used_blocks() const { return n_blocks() - static_cast<int32_t>(free_.size() + evictable_.size()); }
  int32_t cached_blocks() const { return static_cast<int32_t>(evictable_.size()); }
  int32_t available_blocks() const { return static_cast<int32_t>(free_.size() + evictable_.size()); }
  // Off: removed sequences give their blocks straight back and nothing is shared.
  void set_prefix_caching(bool on);

  int32_t add_sequence();
  void remove_sequence(int32_t seq);
  int32_t length(int32_t seq) const { return get(seq).length; }
  std::span<const int32_t> tokens(int32_t seq) const { return get(seq).tokens; }
  // One entry per block of positions, -1 where drop_blocks_before freed it.
  std::span<const int32_t> blocks(int32_t seq) const { return get(seq).blocks; }

  // Blocks that `n` more tokens of `seq` need beyond those it holds.
  int32_t blocks_needed(int32_t seq, int32_t n) const;
  // Makes room for `n` more tokens of `seq` (taking free blocks, then the least recently used cached ones), or
  // throws ContextFull changing nothing.
  void reserve(int32_t seq, int32_t n);
  // Records that `tokens`, for which room was reserved, are now in the cache after the sequence's others.
  void append(int32_t seq, std::span<const int32_t> tokens);

  // A block's contents to copy into another before a sequence writes into the copy.
  struct BlockCopy {
    int32_t from;
    int32_t to;
  };
  // For an empty sequence: takes the cached blocks of the longest prefix of tokens[0, max_tokens) that the
  // cache holds, and returns how many tokens that is, with the copy the caller must make (in the backend's
  // cache) when the prefix ends inside a cached block.
  struct PrefixHit {
    int32_t n_tokens = 0;
    std::optional<BlockCopy> copy;
  };
  PrefixHit attach_prefix(int32_t seq, std::span<const int32_t> tokens, int32_t max_tokens);
  // A new sequence with the same tokens as `seq`: it shares its full blocks and gets a copy of a partly filled
  // last block (returned, for the caller to make). Throws ContextFull when no block is left for the copy.
  std::pair<int32_t, std::optional<BlockCopy>> fork(int32_t seq);

  // Sliding window: gives back the blocks of `seq` whose positions all lie before `first_position` and at or
  // after n_sink (the sinks stay), leaving -1 in their place.
  void drop_blocks_before(int32_t seq, int32_t first_position, int32_t n_sink);

  // Context shift: drops positions [keep, keep + n_discard) of `seq` and moves the later ones n_discard positions
  // earlier. n_discard is a positive multiple of the block size, so whole blocks move in the table; the block that
  // `keep` splits takes the moved positions' slots by copy. The work the backend must do in its cache comes back:
  // copies of shared blocks this changes (first), slot copies, and the slots whose keys now belong to a position
  // n_discard earlier. Throws std::invalid_argument for a bad range, ContextFull (changing nothing) when no block
  // is left for a copy.
  struct ShiftWork {
    std::vector<BlockCopy> block_copies;
    std::vector<BlockCopy> slot_copies;  // from slot, to slot
    std::vector<int32_t> rotated_slots;
  };
  ShiftWork shift(int32_t seq, int32_t keep, int32_t n_discard);

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    std::vector<int32_t> tokens;
    int32_t length = 0;
    uint64_t prefix_hash;  // of the tokens before its last full block's end
    bool shifted = false;  // a context shift moved its tokens: its blocks are never registered
  };
  struct Block {
    int32_t ref = 0;              // sequences holding it
    bool registered = false;      // findable by hash (full_by_hash_, by_parent_)
    uint64_t parent = 0;          // hash of every token before the block
    uint64_t hash = 0;            // of every token up to its end (full blocks)
    std::vector<int32_t> tokens;  // its tokens, while registered
    uint64_t last_use = 0;
  };
  Sequence& get(int32_t seq);
  const Sequence& get(int32_t seq) const;
  int32_t take_block();
  void release_block(int32_t b);
  void register_block(int32_t b, uint64_t parent, std::span<const int32_t> tokens, bool full);
  void unregister_block(int32_t b);

  int32_t block_size_;
  bool prefix_caching_ = true;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;                               // unreferenced, unregistered; a stack, low blocks on top
  std::set<std::pair<uint64_t, int32_t>> evictable_;        // (last_use, block): unreferenced, registered
  std::unordered_map<uint64_t, int32_t> full_by_hash_;      // full registered blocks
  std::unordered_multimap<uint64_t, int32_t> by_parent_;    // every registered block, by its parent's hash
  std::map<int32_t, Sequence> sequences_;
  int32_t next_id_ = 0;
  uint64_t clock_ = 0;
};

}  // namespace tessera::engine
