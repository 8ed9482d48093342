// WordPiece (tokenizer.ggml.model = bert), as llama.cpp runs it. The text is normalised (accents stripped to the
// first code point of the canonical decomposition, lower-cased, controls dropped) and split on whitespace,
// with every punctuation mark, ASCII symbol and CJK ideograph a word of its own. Each word, prefixed with
// U+2581 (the converter stores word-initial pieces that way and drops the "##" of continuations), is covered
// greedily by the longest matching tokens; a word that cannot be covered becomes the unknown token.
#include <stdexcept>

#include "tokenizer/impl.h"

namespace tessera::tokenizer {

namespace {

bool is_chinese_char(uint32_t cp) {
  // The ranges BERT's basic tokenizer isolates (its upper bound of the 0x2B920 block included).
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words(1);
  for (size_t offset = 0; offset < text.size();) {
    Utf8Char c = decode_utf8(text, offset);
    offset += c.length;
    const uint32_t cp = strip_accent(c.codepoint);
    if (is_unicode_whitespace(cp)) {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    if (cp == 0 || cp == 0xFFFD || is_control_char(cp)) continue;
    std::string lowered;
    append_utf8(lowered, to_lower(cp));
    if (is_punctuation(cp) || (cp < 0x7F && is_symbol(cp)) || is_chinese_char(cp)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = std::move(lowered);
      words.emplace_back();
    } else {
      words.back() += lowered;
    }
  }
  if (words.back().empty()) words.pop_back();
  return words;
}

}  // namespace

void Tokenizer::Impl::encode_wpm(std::string_view text, std::vector<int32_t>& out) const {
  for (const std::string& word : split_words(text)) {
    const std::string prefixed = "\xE2\x96\x81" + word;
    const size_t n = prefixed.size();
    const size_t before = out.size();
    for (size_t i = 0; i < n;) {
      size_t matched = 0;
      for (size_t j = std::min(n, i + max_token_len + 1); j > i; --j) {
        if (int32_t id = find(std::string_view(prefixed).substr(i, j - i)); id >= 0) {
          out.push_back(id);
          matched = j;
          break;
        }
      }
      if (matched == 0) {
        out.resize(before);
        break;
      }
      i = matched;
    }
    if (out.size() == before) {
      if (unk < 0) throw std::runtime_error("WordPiece word has no tokens and the vocabulary has no unknown token");
      out.push_back(unk);
    }
  }
}

}  // namespace tessera::tokenizer
