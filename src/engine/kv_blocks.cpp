#include "engine/kv_blocks.h"

#include <string>

namespace tessera::engine {

KvBlocks::KvBlocks(int32_t n_slots, int32_t block_size) : n_slots_(n_slots), block_size_(block_size) {
  if (block_size <= 0 || n_slots <= 0 || n_slots % block_size != 0) {
    throw std::invalid_argument("KV cache of " + std::to_string(n_slots) + " slots cannot be cut into blocks of " +
                                std::to_string(block_size));
  }
  // Hand out low blocks first: the free list is a stack with block 0 on top.
  for (int32_t b = n_slots / block_size - 1; b >= 0; --b) free_blocks_.push_back(b);
}

int32_t KvBlocks::add_sequence() {
  const int32_t id = next_id_++;
  sequences_.emplace(id, Sequence{});
  return id;
}

void KvBlocks::remove_sequence(int32_t seq) {
  Sequence& s = get(seq);
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) free_blocks_.push_back(*it);
  sequences_.erase(seq);
}

int32_t KvBlocks::length(int32_t seq) const { return get(seq).length; }

void KvBlocks::reserve(int32_t seq, int32_t n) {
  Sequence& s = get(seq);
  const int64_t needed = static_cast<int64_t>(s.length) + n;
  const int64_t capacity = static_cast<int64_t>(s.blocks.size()) * block_size_;
  if (needed <= capacity) return;
  const int64_t new_blocks = (needed - capacity + block_size_ - 1) / block_size_;
  if (new_blocks > static_cast<int64_t>(free_blocks_.size())) {
    throw ContextFull("the context is full: " + std::to_string(needed) + " tokens do not fit in the " +
                      std::to_string(n_slots_) + "-token KV cache (" + std::to_string(s.length) +
                      " already used by this sequence); raise --ctx-size");
  }
  for (int64_t i = 0; i < new_blocks; ++i) {
    const int32_t b = free_blocks_.back();
    free_blocks_.pop_back();
    s.blocks.push_back(b);
    for (int32_t j = 0; j < block_size_; ++j) s.slots.push_back(b * block_size_ + j);
  }
}

void KvBlocks::advance(int32_t seq, int32_t n) {
  Sequence& s = get(seq);
  if (static_cast<int64_t>(s.length) + n > static_cast<int64_t>(s.slots.size())) {
    throw std::logic_error("KvBlocks::advance past the reserved capacity");
  }
  s.length += n;
}

const std::vector<int32_t>& KvBlocks::slots(int32_t seq) const { return get(seq).slots; }

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
