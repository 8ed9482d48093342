// Internals shared by the tokenizer's translation units (not part of the public API).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

#include "util/utf8.h"

namespace tessera::tokenizer {

// Per-token attributes, as llama.cpp derives them from the token type (Undefined has none) plus the
// strip flags it sets by model name.
enum Attr : uint32_t {
  kAttrNormal = 1u << 0,
  kAttrUnknown = 1u << 1,
  kAttrControl = 1u << 2,
  kAttrUserDefined = 1u << 3,
  kAttrUnused = 1u << 4,
  kAttrByte = 1u << 5,
  kAttrLstrip = 1u << 6,  // whitespace before a matched special token is dropped
  kAttrRstrip = 1u << 7,  // whitespace after it is dropped
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// The pre-tokenizer of a byte-level BPE vocabulary: llama.cpp's regexes for tokenizer.ggml.pre, compiled with
// PCRE2 (UTF, Unicode properties), applied one after another, each splitting the pieces the previous one left.
class PreTokenizer {
 public:
  explicit PreTokenizer(const std::string& name);  // throws "unknown pre-tokenizer type: 'X'"
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Byte ranges [offset, offset + length) of the pre-tokens of `text` (valid UTF-8), in order.
  void split(std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces) const;

  bool clean_spaces = true;    // decode removes the spaces llama.cpp's clean-up removes
  bool ignore_merges = false;  // a pre-token that is a token is taken whole (Llama 3, Tekken)
  bool adds_bos = false;       // llama.cpp's default add_bos for this pre-tokenizer (before the GGUF key)

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

struct Tokenizer::Impl {
  ModelKind kind = ModelKind::SentencePiece;
  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<TokenType> type;
  std::vector<uint32_t> attr;
  StringMap id_of;                      // text -> id (the last id wins for duplicate texts, as in llama.cpp)
  std::vector<int32_t> special_tokens;  // matched before tokenizing, longest text first
  std::vector<std::string> piece;       // token_to_piece with special = true
  std::vector<int32_t> end_of_generation;  // sorted

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, sep = -1, pad = -1;
  std::vector<std::string> warnings;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  bool clean_spaces = false;   // decode drops the space before ?!., and some apostrophes (BPE, WordPiece)
  bool ignore_merges = false;  // BPE: a pre-token that is already a token is taken whole (Llama 3)

  std::array<int32_t, 256> byte_token{};  // SentencePiece byte fallback: byte -> <0xNN> (or unk)
  StringMap merge_rank;                   // BPE: "left right" -> rank
  std::shared_ptr<const PreTokenizer> pre;
  size_t max_token_len = 0;  // WordPiece: longest token text in bytes
  bool spm_words_independent = false;  // SentencePiece: no token has U+2581 after another character

  int32_t find(std::string_view s) const {
    auto it = id_of.find(s);
    return it == id_of.end() ? -1 : it->second;
  }

  // Each appends the tokens of one run of plain text (special tokens are split off before).
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_spm_run(std::string_view text, std::vector<int32_t>& out) const;  // merges one run as a whole
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void encode_wpm(std::string_view text, std::vector<int32_t>& out) const;
};

// bpe.cpp
std::string byte_level_encode(std::string_view bytes);   // raw bytes -> GPT-2's printable code points
std::string byte_level_decode(std::string_view text);    // the inverse, for a token's text

// unicode.cpp
struct Utf8Char {
  uint32_t codepoint;  // U+FFFD for an invalid byte
  uint32_t length;     // bytes consumed (1 for an invalid byte)
};
Utf8Char decode_utf8(std::string_view s, size_t offset);
using util::append_utf8;
size_t utf8_sequence_length(uint8_t first_byte);  // from the lead byte alone; 1 for a stray byte
// WordPiece normalisation helpers.
bool is_unicode_whitespace(uint32_t cp);
bool is_punctuation(uint32_t cp);  // \p{P}
bool is_symbol(uint32_t cp);       // \p{S}
bool is_control_char(uint32_t cp);  // \p{C}
uint32_t to_lower(uint32_t cp);
uint32_t strip_accent(uint32_t cp);  // the first code point of the canonical decomposition

}  // namespace tessera::tokenizer
