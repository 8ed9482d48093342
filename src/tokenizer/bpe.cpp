// Byte-level BPE (tokenizer.ggml.model = gpt2), as llama.cpp runs it: the text is split into pre-tokens by the
// regexes of tokenizer.ggml.pre (PCRE2 with Unicode properties), each pre-token's bytes are mapped to GPT-2's
// printable code points, and adjacent symbols are merged lowest merge rank first (leftmost on ties).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>

#include <array>
#include <optional>
#include <stdexcept>

#include "tokenizer/impl.h"
#include "tokenizer/symbol_merge.h"

namespace tessera::tokenizer {

namespace {

// The split patterns llama.cpp uses per pre-tokenizer type (llama-vocab.cpp, llm_tokenizer_bpe).
constexpr const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
constexpr const char* kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kPoro = " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+";
constexpr const char* kCjk = "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+";

struct PreSpec {
  std::vector<const char*> names;
  std::vector<std::string> regexes;
  bool clean_spaces = true;
  bool ignore_merges = false;
  bool adds_bos = false;
};

const std::vector<PreSpec>& pre_specs() {
  static const std::vector<PreSpec> specs = {
      {{"", "default"},
       {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3}, true, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3}},
      {{"deepseek-llm"},
       {"[\r\n]",
        "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"
        "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"
        "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"
        "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
        "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"
        "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-"
        "\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}"
        "\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"
        "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}"
        "\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}"
        "\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}"
        "\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}"
        "\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}"
        "\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-"
        "\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
        "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
        "\\s+$", kCjk, "\\p{N}+"},
       false},
      {{"deepseek-coder"}, {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", kCjk, "\\p{N}"}, false},
      {{"deepseek-v3"},
       {"\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
        "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
       false},
      {{"falcon"}, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", kGpt2, "[0-9][0-9][0-9]"}},
      {{"starcoder", "refact", "codeshell", "exaone", "minerva-7b"}, {"\\p{N}", kGpt2}},
      {{"command-r", "smollm"}, {"\\p{N}", kGpt2}, false},
      {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code",
        "roberta-bpe", "mpt", "olmo", "jais"},
       {kGpt2}},
      {{"qwen2", "deepseek-r1-qwen"}, {kQwen2}, false},
      {{"stablelm2", "megrez"}, {kQwen2}},
      {{"poro-chat"}, {kPoro}, false},
      {{"bloom", "gpt3-finnish"}, {kPoro}},
      {{"viking"}, {kPoro, "\\p{N}"}, false},
      {{"tekken"},
       {"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^"
        "a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
       false, true, true},
      {{"chameleon"},
       {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
        "[\\p{P}!-/:-@\\[-`{-~]", kGpt2},
       false, false, true},
  };
  return specs;
}

// GPT-2's byte <-> code point map: printable Latin-1 bytes stand for themselves, the rest get 256, 257, ...
struct ByteLevelMap {
  std::array<uint32_t, 256> codepoint_of{};
  std::array<int16_t, 512> byte_of{};  // -1: not a byte-level code point
  ByteLevelMap() {
    byte_of.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      codepoint_of[b] = printable ? b : next++;
      byte_of[codepoint_of[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelMap& byte_level_map() {
  static const ByteLevelMap map;
  return map;
}

// Invalid UTF-8 becomes U+FFFD, as llama.cpp's decoder does before splitting.
std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    Utf8Char c = decode_utf8(text, offset);
    if (c.codepoint == 0xFFFD && c.length == 1) append_utf8(out, 0xFFFD);
    else out.append(text.substr(offset, c.length));
    offset += c.length;
  }
  return out;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(const std::string& name) {
  const PreSpec* spec = nullptr;
  for (const PreSpec& s : pre_specs())
    for (const char* n : s.names)
      if (name == n) spec = &s;
  if (!spec) throw std::runtime_error(fmt::format("unknown pre-tokenizer type: '{}'", name));
  clean_spaces = spec->clean_spaces;
  ignore_merges = spec->ignore_merges;
  adds_bos = spec->adds_bos;
  for (const std::string& pattern : spec->regexes) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    auto regex = std::make_unique<Regex>();
    // DOLLAR_ENDONLY: '$' means the end of the piece only, as in the ECMAScript regexes llama.cpp runs.
    regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &error, &error_offset, nullptr);
    if (!regex->code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw std::runtime_error(fmt::format("pre-tokenizer '{}': regex error at {}: {}", name, error_offset,
                                           reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(regex->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    regexes_.push_back(std::move(regex));
  }
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, std::vector<std::pair<size_t, size_t>>& pieces) const {
  pieces.clear();
  if (!text.empty()) pieces.emplace_back(0, text.size());
  std::vector<std::pair<size_t, size_t>> next;
  for (const auto& regex : regexes_) {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(regex->code, nullptr);
    next.clear();
    for (auto [offset, length] : pieces) {
      auto subject = reinterpret_cast<PCRE2_SPTR>(text.data() + offset);
      size_t search_from = 0, emitted = 0;
      while (search_from < length) {
        int rc = pcre2_match(regex->code, subject, length, search_from, PCRE2_NO_UTF_CHECK, match, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          pcre2_match_data_free(match);
          throw std::runtime_error(fmt::format("pre-tokenizer regex failed with PCRE2 error {}", rc));
        }
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
        size_t start = ovector[0], end = ovector[1];
        if (end == start) {  // an empty match splits nothing; step over one character
          search_from = start + utf8_sequence_length(static_cast<uint8_t>(text[offset + start]));
          continue;
        }
        if (start > emitted) next.emplace_back(offset + emitted, start - emitted);  // unmatched text stays a piece
        next.emplace_back(offset + start, end - start);
        emitted = search_from = end;
      }
      if (emitted < length) next.emplace_back(offset + emitted, length - emitted);
    }
    pcre2_match_data_free(match);
    pieces.swap(next);
  }
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteLevelMap& map = byte_level_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(out, map.codepoint_of[static_cast<uint8_t>(c)]);
  return out;
}

std::string byte_level_decode(std::string_view text) {
  const ByteLevelMap& map = byte_level_map();
  std::string out;
  out.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    Utf8Char c = decode_utf8(text, offset);
    int byte = c.codepoint < map.byte_of.size() ? map.byte_of[c.codepoint] : -1;
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {  // not a byte-level code point: shown as llama.cpp shows it
      out += "[UNK_BYTE_0x";
      for (size_t i = 0; i < c.length; ++i) out += fmt::format("{:02x}", static_cast<uint8_t>(text[offset + i]));
      out.append(text);
      out += "]";
    }
    offset += c.length;
  }
  return out;
}

void Tokenizer::Impl::encode_bpe(std::string_view raw, std::vector<int32_t>& out) const {
  const std::string text = valid_utf8(raw);
  std::vector<std::pair<size_t, size_t>> pieces;
  pre->split(text, pieces);

  std::vector<MergeSymbol> symbols;
  std::string key;
  for (auto [offset, length] : pieces) {
    const std::string word = byte_level_encode(std::string_view(text).substr(offset, length));
    if (ignore_merges) {
      if (int32_t id = find(word); id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    // Lower merge ranks merge first.
    merge_symbols(word, symbols, [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<int32_t> {
      key.assign(word, left.offset, left.length);
      key.push_back(' ');
      key.append(word, right.offset, right.length);
      const auto it = merge_rank.find(key);
      if (it == merge_rank.end()) return std::nullopt;
      return -it->second;
    });
    for (int32_t i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
      std::string_view piece = std::string_view(word).substr(symbols[i].offset, symbols[i].length);
      if (int32_t id = find(piece); id >= 0) {
        out.push_back(id);
        continue;
      }
      for (char c : piece)  // llama.cpp emits the single-byte tokens that exist and drops the rest
        if (int32_t id = find(std::string_view(&c, 1)); id >= 0) out.push_back(id);
    }
  }
}

}  // namespace tessera::tokenizer
