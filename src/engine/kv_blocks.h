// Bookkeeping of the KV cache: the cache has n_slots token slots, handed out to sequences in blocks of
// block_size slots. A sequence's position p lives in slot blocks[p / block_size] * block_size + p % block_size.
// Blocks (not one contiguous range per sequence) let many sequences share one cache without fragmentation,
// and later let sequences share prefix blocks.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <vector>

namespace tessera::engine {

class ContextFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class KvBlocks {
 public:
  KvBlocks(int32_t n_slots, int32_t block_size);

  int32_t n_slots() const { return n_slots_; }
  int32_t block_size() const { return block_size_; }
  int32_t free_slots() const { return static_cast<int32_t>(free_blocks_.size()) * block_size_; }

  int32_t add_sequence();
  void remove_sequence(int32_t seq);
  int32_t length(int32_t seq) const;

  // Makes room for `n` more tokens of `seq` (allocating blocks), or throws ContextFull changing nothing.
  void reserve(int32_t seq, int32_t n);
  // Marks the next `n` reserved positions as filled.
  void advance(int32_t seq, int32_t n);
  // Slot of every position of the sequence's reserved capacity (positions 0 .. capacity-1).
  const std::vector<int32_t>& slots(int32_t seq) const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    std::vector<int32_t> slots;
    int32_t length = 0;
  };
  Sequence& get(int32_t seq);
  const Sequence& get(int32_t seq) const;

  int32_t n_slots_;
  int32_t block_size_;
  std::vector<int32_t> free_blocks_;
  std::map<int32_t, Sequence> sequences_;
  int32_t next_id_ = 0;
};

}  // namespace tessera::engine
