// SentencePiece BPE (tokenizer.ggml.model = llama), as llama.cpp runs it: start from UTF-8 characters and
// repeatedly merge the adjacent pair whose merged text is the token with the highest score (the leftmost pair
// on ties; symbol_merge.h); pieces that are not tokens fall back to byte tokens <0xNN>.
//
// When no token has a U+2581 after another character (true of the Llama-2 and Phi-3 vocabularies), no merge can
// cross the start of a word, so each word is merged on its own: the same merges in the same order within each
// word, with a small queue that stays in cache instead of one as long as the text.
#include <fmt/format.h>

#include <optional>
#include <stdexcept>

#include "tokenizer/impl.h"
#include "tokenizer/symbol_merge.h"

namespace tessera::tokenizer {


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
  std::vector<MergeSymbol> symbols;
  symbols.reserve(text.size());
  merge_symbols(text, symbols, [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<float> {
    const int32_t id = find(text.substr(left.offset, left.length + right.length));
    if (id < 0) return std::nullopt;
    return score[id];
  });

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
