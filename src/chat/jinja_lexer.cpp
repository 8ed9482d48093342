#include "chat/jinja_lexer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "chat/jinja_unicode.h"

namespace tessera::chat {

TemplateError::TemplateError(int line, const std::string& message)
    : std::runtime_error(fmt::format("chat template line {}: {}", line, message)), line_(line) {}

}  // namespace tessera::chat

namespace tessera::chat::jinja {

namespace {

// Jinja splits on \r\n, \r and \n, joins with \n, and drops one trailing newline (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

size_t python_rstrip_end(std::string_view s) { return rstrip_end(s, nullptr); }

// The end of a run of Python whitespace starting at pos.
size_t skip_python_space(std::string_view s, size_t pos) { return pos + lstrip_offset(s.substr(pos), nullptr); }

bool all_python_space(std::string_view s) { return !s.empty() && lstrip_offset(s, nullptr) == s.size(); }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize_newlines(source)) {
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    bool line_starting = true;
    size_t pos = 0;
    while (pos < src_.size()) {
      const size_t open = find_tag_open(pos);
      if (open == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      const char kind = src_[open + 1];  // '{', '%' or '#'
      const char sign = open + 2 < src_.size() && (src_[open + 2] == '-' || src_[open + 2] == '+') ? src_[open + 2] : 0;
      std::string_view text = std::string_view(src_).substr(pos, open - pos);
      if (sign == '-') {
        text = text.substr(0, python_rstrip_end(text));
      } else if (sign != '+' && kind != '{') {           // lstrip_blocks: block and comment tags only
        const size_t line_start = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((line_start > 0 || line_starting) && all_python_space(text.substr(line_start)))
          text = text.substr(0, line_start);
      }
      emit_text(text, pos);
      size_t after = open + 2 + (sign ? 1 : 0);
      std::string ending;
      if (kind == '#') {
        after = skip_comment(open, after, &ending);
      } else if (kind == '%' && is_raw_begin(after)) {
        after = lex_raw(open, after, &ending);
      } else {
        after = lex_tag(kind == '{', open, after, &ending);
      }
      line_starting = !ending.empty() && ending.back() == '\n';
      pos = after;
    }
    tokens_.push_back({TokenKind::End, "", line_of(src_.size())});
    return std::move(tokens_);
  }

 private:
  int line_of(size_t pos) const {
    return static_cast<int>(std::lower_bound(newlines_.begin(), newlines_.end(), pos) - newlines_.begin()) + 1;
  }

  [[noreturn]] void fail(size_t pos, const std::string& message) const { throw TemplateError(line_of(pos), message); }

  size_t find_tag_open(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_text(std::string_view text, size_t pos) {
    if (!text.empty()) tokens_.push_back({TokenKind::Text, std::string(text), line_of(pos)});
  }

  // A tag end at `pos`: "+%}" keeps what follows, "-%}" strips all following whitespace, "%}" drops one newline
  // (trim_blocks; block tags only). Returns the position after it, or npos if there is none here.
  size_t match_end(size_t pos, char close, bool trim_newline, std::string* ending) const {
    auto at = [&](size_t i, std::string_view s) { return src_.compare(i, s.size(), s) == 0; };
    const std::string end = std::string(1, close) + "}";
    if (at(pos, "+" + end) && close != '}') {
      *ending = "+" + end;
      return pos + 3;
    }
    if (at(pos, "-" + end)) {
      const size_t after = skip_python_space(src_, pos + 3);
      *ending = src_.substr(pos, after - pos);
      return after;
    }
    if (at(pos, end)) {
      size_t after = pos + 2;
      if (trim_newline && after < src_.size() && src_[after] == '\n') ++after;
      *ending = src_.substr(pos, after - pos);
      return after;
    }
    return std::string::npos;
  }

  size_t skip_comment(size_t open, size_t pos, std::string* ending) {
    const size_t close = src_.find("#}", pos);
    if (close == std::string::npos) fail(open, "missing end of comment tag");
    size_t start = close;
    if (close > pos && (src_[close - 1] == '-' || src_[close - 1] == '+')) start = close - 1;
    return match_end(start, '#', true, ending);
  }

  bool is_raw_begin(size_t pos) const {
    size_t p = skip_python_space(src_, pos);
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    if (p < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_')) return false;
    p = skip_python_space(src_, p);
    return src_.compare(p, 2, "%}") == 0 || src_.compare(p, 3, "-%}") == 0;
  }

  // {% raw %}...{% endraw %}: the text in between is output as it is (the raw tag itself has no trim_blocks).
  size_t lex_raw(size_t open, size_t pos, std::string* ending) {
    size_t p = skip_python_space(src_, skip_python_space(src_, pos) + 3);
    if (src_[p] == '-')
      p = skip_python_space(src_, p + 3);
    else
      p += 2;
    for (size_t search = p;;) {
      const size_t tag = src_.find("{%", search);
      if (tag == std::string::npos) fail(open, "missing end of raw directive");
      size_t q = tag + 2;
      const char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      q = skip_python_space(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) {
        search = tag + 2;
        continue;
      }
      q = skip_python_space(src_, q + 6);
      const size_t after = match_end(q, '%', true, ending);
      if (after == std::string::npos) fail(tag, "missing end of raw directive");
      std::string_view text = std::string_view(src_).substr(p, tag - p);
      if (sign == '-') {
        text = text.substr(0, python_rstrip_end(text));
      } else if (sign != '+') {
        const size_t line_start = text.rfind('\n') + 1;
        if (line_start > 0 && all_python_space(text.substr(line_start))) text = text.substr(0, line_start);
      }
      emit_text(text, p);
      return after;
    }
  }

  // The tokens of one {{ ... }} or {% ... %}; returns the position after its end.
  size_t lex_tag(bool variable, size_t open, size_t pos, std::string* ending) {
    tokens_.push_back({variable ? TokenKind::VariableBegin : TokenKind::BlockBegin, "", line_of(open)});
    std::vector<char> brackets;  // the tag can only end where every bracket is closed
    while (true) {
      pos = skip_python_space(src_, pos);
      if (pos >= src_.size())
        fail(open, variable ? "unexpected end of template inside {{ }}" : "unexpected end of template inside {% %}");
      if (brackets.empty()) {
        const size_t after = match_end(pos, variable ? '}' : '%', !variable, ending);
        if (after != std::string::npos) {
          tokens_.push_back({variable ? TokenKind::VariableEnd : TokenKind::BlockEnd, "", line_of(pos)});
          return after;
        }
      }
      pos = lex_token(pos, brackets);
    }
  }

  size_t lex_token(size_t pos, std::vector<char>& brackets) {
    const int line = line_of(pos);
    const char c = src_[pos];
    const auto is_digit = [&](size_t i) {
      return i < src_.size() && std::isdigit(static_cast<unsigned char>(src_[i]));
    };
    if (std::isdigit(static_cast<unsigned char>(c))) return lex_number(pos, line);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos;
      while (end < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_')) ++end;
      tokens_.push_back({TokenKind::Name, src_.substr(pos, end - pos), line});
      return end;
    }
    if (c == '\'' || c == '"') return lex_string(pos, line);
    static constexpr std::string_view kTwoCharOps[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwoCharOps) {
      if (src_.compare(pos, 2, op) == 0) {
        tokens_.push_back({TokenKind::Operator, std::string(op), line});
        return pos + 2;
      }
    }
    static constexpr std::string_view kOneCharOps = "+-/*%~[](){}><=.:|,;";
    if (kOneCharOps.find(c) == std::string_view::npos) fail(pos, fmt::format("unexpected character '{}'", c));
    if (c == '(' || c == '[' || c == '{') {
      brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty()) fail(pos, fmt::format("unexpected '{}'", c));
      if (brackets.back() != c) fail(pos, fmt::format("unexpected '{}', expected '{}'", c, brackets.back()));
      brackets.pop_back();
    }
    (void)is_digit;
    tokens_.push_back({TokenKind::Operator, std::string(1, c), line});
    return pos + 1;
  }

  // Integers "12", "1_000"; floats "1.5", "1e3", "2.5e-3". A float needs digits on both sides of the point.
  size_t lex_number(size_t pos, int line) {
    const auto digits = [&](size_t p) {
      size_t q = p;
      while (q < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[q])) ||
                                 (src_[q] == '_' && q > p && q + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[q + 1])))))
        ++q;
      return q;
    };
    size_t end = digits(pos);
    bool is_float = false;
    // After a '.', Jinja reads "x.0.1" as subscripts, never as a float.
    const bool after_dot =
        !tokens_.empty() && tokens_.back().kind == TokenKind::Operator && tokens_.back().value == ".";
    if (!after_dot && end + 1 < src_.size() && src_[end] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[end + 1]))) {
      end = digits(end + 1);
      is_float = true;
    }
    if (!after_dot && end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t q = end + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
        end = digits(q);
        is_float = true;
      }
    }
    std::string text = src_.substr(pos, end - pos);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    tokens_.push_back({is_float ? TokenKind::Float : TokenKind::Integer, std::move(text), line});
    return end;
  }

  // A quoted string with Python's unicode-escape sequences, as Jinja decodes them.
  size_t lex_string(size_t pos, int line) {
    const char quote = src_[pos];
    std::string out;
    size_t p = pos + 1;
    while (true) {
      if (p >= src_.size()) fail(pos, "unterminated string");
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) fail(pos, "unterminated string");
      const char e = src_[p + 1];
      p += 2;
      switch (e) {
        case '\n': break;  // a backslash at the end of a line continues the string
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          const int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int k = 0; k < n; ++k) {
            const int h = p + k < src_.size() ? hex_value(src_[p + k]) : -1;
            if (h < 0) fail(pos, fmt::format("truncated \\{} escape in a string", e));
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          if (cp > 0x10FFFF) fail(pos, "\\U escape outside the Unicode range");
          append_utf8(out, cp);
          p += n;
          break;
        }
        case 'N': fail(pos, "unsupported \\N{...} escape in a string");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k, ++p)
              cp = cp * 8 + static_cast<uint32_t>(src_[p] - '0');
            append_utf8(out, cp);
          } else {
            out.push_back('\\');  // Python keeps unknown escapes as they are
            out.push_back(e);
          }
      }
    }
    tokens_.push_back({TokenKind::String, std::move(out), line});
    return p + 1;
  }

  std::string src_;
  std::vector<size_t> newlines_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace tessera::chat::jinja
