// SentencePiece BPE (tokenizer.ggml.model = llama), as llama.cpp runs it: start from UTF-8 characters and
// repeatedly merge the adjacent pair whose merged text is the token with the highest score (the leftmost pair
// on ties); pieces that are not tokens fall back to byte tokens <0xNN>. A priority queue of candidate pairs
// keeps this O(n log n); stale candidates (a side already merged) are skipped when popped.
//
// When no token has a U+2581 after another character (true of the Llama-2 and Phi-3 vocabularies), no merge can
// cross the start of a word, so each word is merged on its own: the same merges in the same order within each
// word, with a small queue that stays in cache instead of one as long as the text.
#include <fmt/format.h>

#include <queue>
#include <stdexcept>

#include "tokenizer/impl.h"

namespace tessera::tokenizer {

namespace {

struct Symbol {
  int32_t prev;
  int32_t next;
  size_t offset;  // into the text; a symbol's bytes are contiguous and follow its predecessor's
  size_t length;  // 0 once merged into its left neighbour
};

struct Candidate {
  float score;
  int32_t left;
  int32_t right;
  size_t length;  // of the merged text when queued; a different current length means the pair is stale
};

struct LowerPriority {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  if (!spm_words_independent) {
    encode_spm_run(text, out);
    return;
  }
  const std::string_view space = "\xE2\x96\x81";
  size_t start = 0;
  for (size_t at = text.find(space, 1); at != std::string_view::npos; at = text.find(space, at + 1)) {
    if (at >= start + space.size() && text.substr(at - space.size(), space.size()) == space) continue;
    if (at == start) continue;
    encode_spm_run(text.substr(start, at - start), out);
    start = at;
  }
  encode_spm_run(text.substr(start), out);
}

void Tokenizer::Impl::encode_spm_run(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    size_t length = std::min(utf8_sequence_length(static_cast<uint8_t>(text[offset])), text.size() - offset);
    auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, offset + length == text.size() ? -1 : index + 1, offset, length});
    offset += length;
  }

  std::vector<Candidate> storage;
  storage.reserve(symbols.size());
  std::priority_queue<Candidate, std::vector<Candidate>, LowerPriority> queue(LowerPriority{}, std::move(storage));
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    std::string_view merged = text.substr(symbols[left].offset, symbols[left].length + symbols[right].length);
    int32_t id = find(merged);
    if (id < 0) return;
    queue.push({score[id], left, right, merged.size()});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_pair(i - 1, i);

  while (!queue.empty()) {
    Candidate best = queue.top();
    queue.pop();
    Symbol& left = symbols[best.left];
    Symbol& right = symbols[best.right];
    if (left.length == 0 || right.length == 0 || left.length + right.length != best.length) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = best.left;
    try_pair(left.prev, best.left);
    try_pair(best.left, left.next);
  }

  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    std::string_view piece = text.substr(symbols[i].offset, symbols[i].length);
    int32_t id = find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (char c : piece) {
      int32_t byte_id = byte_token[static_cast<uint8_t>(c)];
      if (byte_id < 0)
        throw std::runtime_error(fmt::format(
            "cannot encode byte 0x{:02X}: the vocabulary has no byte token and no unknown token", static_cast<uint8_t>(c)));
      out.push_back(byte_id);
    }
  }
}

}  // namespace tessera::tokenizer
