// The model-independent half of the tokenizer: vocabulary checks and attributes, splitting special tokens off
// the text, BOS/EOS, detokenizing and streaming. The per-model encoders are in spm.cpp, bpe.cpp and wpm.cpp.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <utility>

#include "tokenizer/impl.h"

namespace tessera::tokenizer {

namespace {

const char* const kSpaceEscape = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// Texts llama.cpp treats as end-of-turn tokens whatever their declared type (they become control tokens).
constexpr std::string_view kEotTexts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                          "<EOT>", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"};
constexpr std::string_view kEndOfGenerationTexts[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                                      "<|endoftext|>", "<|eom_id|>", "<EOT>"};

uint32_t attr_of(TokenType type) {
  switch (type) {
    case TokenType::Normal: return kAttrNormal;
    case TokenType::Unknown: return kAttrUnknown;
    case TokenType::Control: return kAttrControl;
    case TokenType::UserDefined: return kAttrUserDefined;
    case TokenType::Unused: return kAttrUnused;
    case TokenType::Byte: return kAttrByte;
    case TokenType::Undefined: return 0;
  }
  return 0;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte a SentencePiece byte token such as "<0x0A>" stands for.
std::string byte_token_piece(const std::string& text) {
  int value = 0;
  if (text.size() == 6 && text.starts_with("<0x") && text[5] == '>') {
    int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
    if (hi >= 0 && lo >= 0) value = hi * 16 + lo;
  }
  return std::string(1, static_cast<char>(value));
}

// A run of plain text (token < 0) or a token split off it.
struct Fragment {
  int32_t token;
  size_t offset;
  size_t length;
};

bool is_ascii_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// llama.cpp's decode clean-up for BPE and WordPiece: " ?" " !" " ." " ," lose the space, " ' " becomes "'",
// and " 's" " 'm" " 're" " 've" lose the space.
std::string clean_up_spaces(const std::string& in) {
  std::string a;
  a.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char x = in[i];
    if (i > 0 && in[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) a.pop_back();
    a.push_back(x);
  }
  std::string b;
  b.reserve(a.size());
  char previous = 0;  // the input character before i; a space consumed after an apostrophe reads as none
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    if (i > 0 && x == '\'' && i + 1 < a.size() && previous == ' ' && a[i + 1] == ' ') {
      b.pop_back();
      b.push_back(x);
      ++i;
      previous = 0;
      continue;
    }
    b.push_back(x);
    previous = x;
  }
  std::string c;
  c.reserve(b.size());
  for (size_t i = 0; i < b.size(); ++i) {
    char x = b[i];
    if (i > 0 && b[i - 1] == ' ' && x == '\'' && i + 1 < b.size()) {
      char x1 = b[i + 1];
      bool drop = x1 == 's' || x1 == 'm';
      if (!drop && x1 != 't' && x1 != 'd' && i + 2 < b.size()) {
        char x2 = b[i + 2];
        drop = (x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e');
      }
      if (drop) c.pop_back();
    }
    c.push_back(x);
  }
  return c;
}

}  // namespace

Vocabulary Vocabulary::with_defaults(ModelKind kind) {
  Vocabulary v;
  v.kind = kind;
  switch (kind) {
    case ModelKind::SentencePiece:
      v.bos_id = 1, v.eos_id = 2, v.unk_id = 0;
      v.add_bos = true, v.add_space_prefix = true;
      break;
    case ModelKind::BytePairEncoding:
      v.bos_id = 11, v.eos_id = 11;
      break;
    case ModelKind::WordPiece:
      v.bos_id = 101, v.unk_id = 100, v.sep_id = 102, v.pad_id = 0;
      v.add_bos = true;
      break;
  }
  return v;
}

Tokenizer::Tokenizer(Vocabulary vocab) {
  auto impl = std::make_shared<Impl>();
  Impl& m = *impl;
  const size_t n = vocab.tokens.size();
  if (n == 0) throw std::runtime_error("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) throw std::runtime_error(fmt::format("tokenizer vocabulary too large: {}", n));
  if (!vocab.scores.empty() && vocab.scores.size() != n)
    throw std::runtime_error(fmt::format("tokenizer has {} tokens but {} scores", n, vocab.scores.size()));
  if (!vocab.types.empty() && vocab.types.size() != n)
    throw std::runtime_error(fmt::format("tokenizer has {} tokens but {} token types", n, vocab.types.size()));
  const int32_t n_tokens = static_cast<int32_t>(n);
  auto check_id = [&](int32_t id, const char* what) {
    if (id < -1 || id >= n_tokens)
      throw std::runtime_error(fmt::format("tokenizer {} id {} is outside the vocabulary of {}", what, id, n));
    return id;
  };

  m.kind = vocab.kind;
  m.bos = check_id(vocab.bos_id, "BOS");
  m.eos = check_id(vocab.eos_id, "EOS");
  m.eot = check_id(vocab.eot_id, "EOT");
  m.eom = check_id(vocab.eom_id, "EOM");
  m.unk = check_id(vocab.unk_id, "UNK");
  m.sep = check_id(vocab.sep_id, "SEP");
  m.pad = check_id(vocab.pad_id, "PAD");
  m.add_bos = vocab.add_bos;
  m.add_eos = vocab.add_eos;
  m.add_space_prefix = vocab.add_space_prefix;
  m.warnings = std::move(vocab.warnings);
  m.clean_spaces = vocab.kind == ModelKind::WordPiece;
  if (vocab.kind == ModelKind::BytePairEncoding) {
    m.pre = std::make_shared<const PreTokenizer>(vocab.pre);
    m.clean_spaces = m.pre->clean_spaces;
    m.ignore_merges = m.pre->ignore_merges;
  }

  m.text = std::move(vocab.tokens);
  m.score = vocab.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(vocab.scores);
  m.type = vocab.types.empty() ? std::vector<TokenType>(n, TokenType::Normal) : std::move(vocab.types);
  m.attr.resize(n);
  m.id_of.reserve(n);
  for (int32_t id = 0; id < n_tokens; ++id) {
    std::string& word = m.text[id];
    if (word.empty()) word = fmt::format("[EMPTY_{}]", id);  // as llama.cpp, so the text stays unique
    m.id_of[word] = id;
    m.max_token_len = std::max(m.max_token_len, word.size());
    m.attr[id] = attr_of(m.type[id]);
  }

  // End-of-turn tokens found by their text, as llama.cpp does until converters write them all as keys.
  auto mark_control = [&](int32_t id) { m.attr[id] = (m.attr[id] & ~(kAttrNormal | kAttrUserDefined)) | kAttrControl; };
  for (int32_t id = 0; id < n_tokens; ++id) {
    std::string_view t = m.text[id];
    if (m.eot < 0 && std::ranges::find(kEotTexts, t) != std::end(kEotTexts)) m.eot = id, mark_control(id);
    if (m.eom < 0 && t == "<|eom_id|>") m.eom = id, mark_control(id);
  }
  for (int32_t id = 0; id < n_tokens; ++id) {
    if (std::ranges::find(kEndOfGenerationTexts, std::string_view(m.text[id])) != std::end(kEndOfGenerationTexts)) {
      m.end_of_generation.push_back(id);
      mark_control(id);
    }
  }
  for (int32_t id : {m.eos, m.eot, m.eom})
    if (id >= 0) m.end_of_generation.push_back(id);
  std::ranges::sort(m.end_of_generation);
  m.end_of_generation.erase(std::unique(m.end_of_generation.begin(), m.end_of_generation.end()),
                            m.end_of_generation.end());

  for (int32_t id = 0; id < n_tokens; ++id)
    if (m.attr[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) m.special_tokens.push_back(id);
  std::ranges::stable_sort(m.special_tokens, [&](int32_t a, int32_t b) { return m.text[a].size() > m.text[b].size(); });

  m.piece.resize(n);
  for (int32_t id = 0; id < n_tokens; ++id) {
    const uint32_t a = m.attr[id];
    const std::string& t = m.text[id];
    if (a & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      m.piece[id] = t;
    } else if (a & kAttrNormal) {
      m.piece[id] = m.kind == ModelKind::BytePairEncoding ? byte_level_decode(t) : replace_all(t, kSpaceEscape, " ");
    } else if ((a & kAttrByte) && m.kind != ModelKind::BytePairEncoding) {
      m.piece[id] = byte_token_piece(t);
    }
  }

  // Token attributes llama.cpp sets by model name.
  std::string name = vocab.model_name;
  std::ranges::transform(name, name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto set_attr = [&](std::string_view token, uint32_t flag, bool on) {
    int32_t id = m.find(token);
    if (id >= 0) m.attr[id] = on ? (m.attr[id] | flag) : (m.attr[id] & ~flag);
  };
  if (vocab.pre.find("jina-v2-") != std::string::npos) {
    set_attr("<mask>", kAttrLstrip, true);
  } else if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (int32_t id : m.special_tokens) m.attr[id] |= kAttrRstrip;
    set_attr("</s>", kAttrRstrip, true);
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) set_attr(t, kAttrRstrip, false);
  }

  if (m.kind == ModelKind::SentencePiece) {
    m.spm_words_independent = std::ranges::none_of(m.text, [](const std::string& t) {
      const std::string_view space = kSpaceEscape;
      for (size_t at = t.find(space, 1); at != std::string::npos; at = t.find(space, at + 1))
        if (at < space.size() || std::string_view(t).substr(at - space.size(), space.size()) != space) return true;
      return false;
    });
    for (int b = 0; b < 256; ++b) {
      int32_t id = m.find(fmt::format("<0x{:02X}>", b));
      if (id < 0) id = m.find(std::string(1, static_cast<char>(b)));
      m.byte_token[b] = id >= 0 ? id : m.unk;
    }
  }
  if (m.kind == ModelKind::BytePairEncoding) {
    if (vocab.merges.empty()) throw std::runtime_error("byte-level BPE tokenizer has no merges");
    m.merge_rank.reserve(vocab.merges.size());
    for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
      const std::string& merge = vocab.merges[rank];
      size_t space = merge.find(' ', 1);
      if (space == std::string::npos) continue;  // llama.cpp keeps such a merge but it can never apply
      m.merge_rank.try_emplace(merge, static_cast<int32_t>(rank));
    }
  }
  impl_ = std::move(impl);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  if (text.size() > (size_t{1} << 30))
    throw std::runtime_error(fmt::format("text of {} bytes is too long to tokenize (limit 1 GiB)", text.size()));

  // Split the special tokens off the text, longest first, as llama.cpp's tokenizer_st_partition does.
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (int32_t special : m.special_tokens) {
    const uint32_t a = m.attr[special];
    if (!parse_special && (a & (kAttrControl | kAttrUnknown))) continue;  // user-defined tokens always match
    const std::string& needle = m.text[special];
    std::vector<Fragment> next;
    next.reserve(fragments.size());
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t offset = f.offset, length = f.length;
      while (length > 0) {
        size_t hit = text.substr(offset, length).find(needle);
        if (hit == std::string_view::npos) break;
        size_t match = offset + hit;
        size_t left_length = match - offset;
        if (a & kAttrLstrip)
          while (left_length > 0 && is_ascii_space(text[offset + left_length - 1])) --left_length;
        if (left_length > 0) next.push_back({-1, offset, left_length});
        next.push_back({special, 0, 0});
        size_t right = match + needle.size();
        size_t right_length = offset + length - right;
        if (a & kAttrRstrip)
          while (right_length > 0 && is_ascii_space(text[right])) ++right, --right_length;
        offset = right;
        length = right_length;
      }
      if (length > 0) next.push_back({-1, offset, length});
    }
    fragments = std::move(next);
  }

  std::vector<int32_t> out;
  auto push_special = [&](int32_t id, const char* what) {
    if (id < 0) throw std::runtime_error(fmt::format("the vocabulary adds a {} token but has none", what));
    out.push_back(id);
  };
  switch (m.kind) {
    case ModelKind::SentencePiece: {
      if (add_special && m.add_bos) push_special(m.bos, "BOS");
      bool after_special = true;  // a space prefix goes before the first text and text after a special token
      std::string piece_text;
      for (const Fragment& f : fragments) {
        if (f.token >= 0) {
          out.push_back(f.token);
          after_special = true;
          continue;
        }
        piece_text.clear();
        if (m.add_space_prefix && after_special) piece_text.push_back(' ');
        piece_text.append(text.substr(f.offset, f.length));
        m.encode_spm(replace_all(piece_text, " ", kSpaceEscape), out);
        after_special = false;
      }
      if (add_special && m.add_eos) push_special(m.eos, "EOS");
      break;
    }
    case ModelKind::BytePairEncoding: {
      if (add_special && m.add_bos) push_special(m.bos, "BOS");
      for (const Fragment& f : fragments) {
        if (f.token >= 0) out.push_back(f.token);
        else m.encode_bpe(text.substr(f.offset, f.length), out);
      }
      if (add_special && m.add_eos) push_special(m.eos, "EOS");
      break;
    }
    case ModelKind::WordPiece: {
      if (add_special) push_special(m.bos, "CLS");
      for (const Fragment& f : fragments) {
        if (f.token >= 0) out.push_back(f.token);
        else m.encode_wpm(text.substr(f.offset, f.length), out);
      }
      if (add_special) push_special(m.sep, "SEP");
      break;
    }
  }
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool special) const {
  const Impl& m = *impl_;
  if (id < 0 || id >= n_vocab())
    throw std::runtime_error(fmt::format("token id {} is outside the vocabulary [0, {})", id, n_vocab()));
  if (!special && (m.attr[id] & (kAttrUnknown | kAttrControl))) return {};
  return m.piece[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, DecodeOptions options) const {
  const Impl& m = *impl_;
  bool remove_space = m.add_space_prefix;
  if (options.remove_special && m.add_bos && !ids.empty() && ids.front() == m.bos) {
    remove_space = false;
    ids = ids.subspan(1);
  }
  if (options.remove_special && m.add_eos && !ids.empty() && ids.back() == m.eos) ids = ids.first(ids.size() - 1);

  std::string out;
  for (int32_t id : ids) {
    std::string piece = token_to_piece(id, options.unparse_special);
    std::string_view view = piece;
    if (remove_space && !view.empty() && view.front() == ' ') view.remove_prefix(1);
    remove_space = false;
    out.append(view);
  }
  return m.clean_spaces ? clean_up_spaces(out) : out;
}

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->text.size()); }
ModelKind Tokenizer::kind() const { return impl_->kind; }
const std::string& Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= n_vocab())
    throw std::runtime_error(fmt::format("token id {} is outside the vocabulary [0, {})", id, n_vocab()));
  return impl_->text[id];
}
TokenType Tokenizer::token_type(int32_t id) const {
  token_text(id);  // range check
  return impl_->type[id];
}
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::eot_id() const { return impl_->eot; }
int32_t Tokenizer::unk_id() const { return impl_->unk; }
int32_t Tokenizer::sep_id() const { return impl_->sep; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix; }
bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::ranges::binary_search(impl_->end_of_generation, id);
}
const std::vector<std::string>& Tokenizer::warnings() const { return impl_->warnings; }
bool Tokenizer::is_control(int32_t id) const {
  return id >= 0 && id < n_vocab() && (impl_->attr[id] & kAttrControl) != 0;
}

size_t complete_utf8_prefix(std::string_view bytes) {
  // Only the last 3 bytes can start an unfinished character.
  size_t n = bytes.size();
  for (size_t back = 1; back <= std::min<size_t>(n, 4); ++back) {
    auto byte = static_cast<uint8_t>(bytes[n - back]);
    if ((byte & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead byte
    size_t need = utf8_sequence_length(byte);
    return need > back ? n - back : n;
  }
  return n;  // only continuation bytes at the end: nothing to wait for
}

StreamingDecoder::StreamingDecoder(Tokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {}

std::string StreamingDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_to_piece(id, /*special=*/false);
  size_t ready = complete_utf8_prefix(pending_);
  std::string out = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = pending_.empty() ? std::string() : std::string("\xEF\xBF\xBD");
  pending_.clear();
  return out;
}

}  // namespace tessera::tokenizer
