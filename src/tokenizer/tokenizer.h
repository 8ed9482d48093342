// Tokenizers built from a GGUF file's `tokenizer.*` keys, matching llama.cpp token for token:
//   llama -> SentencePiece BPE (scores, byte fallback <0xNN>, space prefix, ' ' <-> U+2581)
//   gpt2  -> byte-level BPE (merge ranks; pre-tokenizer regexes chosen by tokenizer.ggml.pre, run with PCRE2)
//   bert  -> WordPiece (greedy longest match; lower-cased, accents stripped, split on punctuation)
// The core takes a plain Vocabulary, so tests can build one by hand; from_gguf() fills it from a file.
// docs/TOKENIZER.md says which llama.cpp behaviours are followed and why.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::gguf {
class File;
}

namespace tessera::tokenizer {

// Token types as GGUF stores them in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

enum class ModelKind {
  SentencePiece,     // tokenizer.ggml.model = llama
  BytePairEncoding,  // gpt2
  WordPiece,         // bert
};

// Everything a tokenizer is built from. -1 means "no such token".
struct Vocabulary {
  ModelKind kind = ModelKind::SentencePiece;
  std::string pre = "default";      // byte-level BPE: the pre-tokenizer name (tokenizer.ggml.pre)
  std::string model_name;           // general.name: llama.cpp keys a few token attributes on it (Phi-3)
  std::vector<std::string> tokens;  // id -> text (SentencePiece and WordPiece texts use U+2581 for a space)
  std::vector<float> scores;        // empty: all 0
  std::vector<TokenType> types;     // empty: all Normal
  std::vector<std::string> merges;  // byte-level BPE: "left right", the rank is the index
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t eot_id = -1;  // -1: found by text ("<|eot_id|>", "<|im_end|>", ...) as llama.cpp does
  int32_t eom_id = -1;
  int32_t unk_id = -1;
  int32_t sep_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;
  std::vector<std::string> warnings;  // what from_gguf ignored in the file, one line each

  // A vocabulary with llama.cpp's defaults for `kind`: SentencePiece BOS 1, EOS 2, UNK 0, adds BOS and a space
  // prefix; byte-level BPE BOS = EOS = 11; WordPiece CLS 101 as BOS, UNK 100, SEP 102, PAD 0, adds BOS.
  static Vocabulary with_defaults(ModelKind kind);
};

// How decode() renders ids, after llama_detokenize: `remove_special` drops a leading BOS and a trailing EOS
// when the vocabulary adds them; `unparse_special` prints control and unknown tokens as their text instead of
// nothing. With a space-prefix vocabulary, one leading space of the first piece is removed unless a BOS was
// dropped (then the text keeps the space the tokenizer added; llama.cpp does the same).
struct DecodeOptions {
  bool remove_special = false;
  bool unparse_special = false;
};

class Tokenizer {
 public:
  // Throws std::runtime_error naming the problem for an inconsistent vocabulary (sizes, ids out of range, an
  // unknown pre-tokenizer, BPE without merges). A merge without a space is ignored, as llama.cpp never applies it.
  explicit Tokenizer(Vocabulary vocab);
  // Reads tokenizer.ggml.* (and general.name); "tokenizer model X not supported" for other models.
  static Tokenizer from_gguf(const gguf::File& file);

  // `add_special`: BOS/EOS as the vocabulary's add_bos/add_eos say (WordPiece: CLS ... SEP). Texts over 1 GiB
  // are refused.
  // `parse_special`: text of control tokens such as "<s>" becomes that token; otherwise it is plain text
  // (user-defined tokens are always matched first, as in llama.cpp).
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  std::string decode(std::span<const int32_t> ids, DecodeOptions options = {}) const;
  // The bytes of one token; control and unknown tokens give their text when `special`, else "".
  std::string token_to_piece(int32_t id, bool special = true) const;

  int32_t n_vocab() const;
  ModelKind kind() const;
  const std::string& token_text(int32_t id) const;  // the raw vocabulary entry
  TokenType token_type(int32_t id) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t eot_id() const;  // -1 if none
  int32_t unk_id() const;
  int32_t sep_id() const;
  int32_t pad_id() const;
  bool add_bos() const;
  bool add_eos() const;
  bool add_space_prefix() const;
  // EOS, EOT, EOM and the other end-of-turn tokens llama.cpp recognises by text.
  bool is_end_of_generation(int32_t id) const;
  bool is_control(int32_t id) const;
  // What was wrong in the file but worked around as llama.cpp does (e.g. a BOS id outside the vocabulary, replaced
  // by the default); a frontend shows them.
  const std::vector<std::string>& warnings() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;  // immutable, so copies share it
};

// Turns generated ids into text as they come, holding back the bytes of a UTF-8 character that is not complete
// yet, so push() never returns half a character. Control tokens print nothing; no leading space is removed
// (the text continues a prompt).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(Tokenizer tokenizer);  // a cheap copy: the vocabulary is shared
  std::string push(int32_t id);
  // What is still held back; an incomplete character at the end becomes U+FFFD.
  std::string flush();

 private:
  Tokenizer tokenizer_;
  std::string pending_;
};

// The length of the longest prefix of `bytes` that does not end inside a UTF-8 character (invalid bytes count
// as complete so they cannot hold the stream back forever).
size_t complete_utf8_prefix(std::string_view bytes);

}  // namespace tessera::tokenizer
