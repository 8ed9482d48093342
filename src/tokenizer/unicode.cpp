// UTF-8 coding and the few Unicode properties WordPiece needs. The property tables are generated from the
// Unicode Character Database (see gen_unicode_tables.py) into unicode_tables.inc.
#include <algorithm>
#include <iterator>

#include "tokenizer/impl.h"

namespace tessera::tokenizer {

namespace {

struct Range {
  uint32_t first;
  uint32_t last;
};
struct Mapping {
  uint32_t from;
  uint32_t to;
};

#include "tokenizer/unicode_tables.inc"

template <size_t N>
bool in_ranges(const Range (&ranges)[N], uint32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t value, const Range& r) { return value < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

template <size_t N>
uint32_t mapped(const Mapping (&table)[N], uint32_t cp) {
  auto it = std::lower_bound(std::begin(table), std::end(table), cp,
                             [](const Mapping& m, uint32_t value) { return m.from < value; });
  return it != std::end(table) && it->from == cp ? it->to : cp;
}

}  // namespace

size_t utf8_sequence_length(uint8_t first_byte) {
  if (first_byte < 0x80) return 1;
  if ((first_byte & 0xE0) == 0xC0) return 2;
  if ((first_byte & 0xF0) == 0xE0) return 3;
  if ((first_byte & 0xF8) == 0xF0) return 4;
  return 1;  // a continuation byte or 0xF8..0xFF on its own
}

Utf8Char decode_utf8(std::string_view s, size_t offset) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[offset + i]); };
  const uint8_t first = byte(0);
  const size_t length = utf8_sequence_length(first);
  if (length == 1) return first < 0x80 ? Utf8Char{first, 1} : Utf8Char{0xFFFD, 1};
  if (offset + length > s.size()) return {0xFFFD, 1};
  uint32_t cp = first & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return {0xFFFD, 1};
    cp = (cp << 6) | (byte(i) & 0x3F);
  }
  return {cp, static_cast<uint32_t>(length)};
}

bool is_unicode_whitespace(uint32_t cp) { return in_ranges(kWhitespace, cp); }
bool is_punctuation(uint32_t cp) { return in_ranges(kPunctuation, cp); }
bool is_symbol(uint32_t cp) { return in_ranges(kSymbol, cp); }
bool is_control_char(uint32_t cp) { return in_ranges(kControl, cp); }
uint32_t to_lower(uint32_t cp) { return mapped(kLowercase, cp); }
uint32_t strip_accent(uint32_t cp) {
  // A Hangul syllable decomposes algorithmically into jamo; the first is its leading consonant.
  if (cp >= 0xAC00 && cp <= 0xD7A3) return 0x1100 + (cp - 0xAC00) / 588;
  return mapped(kDecompositionFirst, cp);
}

}  // namespace tessera::tokenizer
