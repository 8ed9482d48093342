// The merge loop of both BPE tokenizers (SentencePiece BPE in spm.cpp, GPT-2 byte-level BPE in bpe.cpp): a text
// starts as its UTF-8 characters, and the adjacent pair of highest priority merges first (the leftmost on ties)
// until no pair may merge. A priority queue of candidate pairs keeps this O(n log n); a candidate whose side has
// merged since it was queued (its length no longer matches) is skipped when popped.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <queue>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/impl.h"

namespace tessera::tokenizer {

struct MergeSymbol {
  int32_t prev;
  int32_t next;
  size_t offset;  // into the text; a symbol's bytes are contiguous and follow its predecessor's
  size_t length;  // 0 once merged into its left neighbour
};

// Fills `symbols` with the characters of `text` and merges them. priority(left, right) returns the pair's
// priority (any ordered type, higher first) or nullopt when the pair does not merge. Afterwards the symbols
// left are the chain that starts at index 0 and follows `next` (none when text is empty).
template <class PriorityOf>
void merge_symbols(std::string_view text, std::vector<MergeSymbol>& symbols, PriorityOf priority) {
  using Priority = typename decltype(priority(std::declval<const MergeSymbol&>(),
                                              std::declval<const MergeSymbol&>()))::value_type;
  struct Candidate {
    Priority priority;
    int32_t left;
    int32_t right;
    size_t length;  // of the merged text when queued
  };
  struct LowerPriority {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.priority < b.priority || (!(b.priority < a.priority) && a.left > b.left);
    }
  };

  symbols.clear();
  for (size_t offset = 0; offset < text.size();) {
    const size_t length = std::min(utf8_sequence_length(static_cast<uint8_t>(text[offset])), text.size() - offset);
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, offset + length == text.size() ? -1 : index + 1, offset, length});
    offset += length;
  }
  std::vector<Candidate> storage;
  storage.reserve(symbols.size());
  std::priority_queue<Candidate, std::vector<Candidate>, LowerPriority> queue(LowerPriority{}, std::move(storage));
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    if (const std::optional<Priority> p = priority(symbols[left], symbols[right])) {
      queue.push({*p, left, right, symbols[left].length + symbols[right].length});
    }
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const Candidate best = queue.top();
    queue.pop();
    MergeSymbol& left = symbols[best.left];
    MergeSymbol& right = symbols[best.right];
    if (left.length == 0 || right.length == 0 || left.length + right.length != best.length) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = best.left;
    try_pair(left.prev, best.left);
    try_pair(best.left, left.next);
  }
}

}  // namespace tessera::tokenizer
