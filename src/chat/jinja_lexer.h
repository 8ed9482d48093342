// Splits a template into text and the tokens inside {{ }} and {% %}, applying Jinja's whitespace rules as Hugging
// Face configures them: trim_blocks (the newline after a block or comment tag is dropped), lstrip_blocks (spaces
// and tabs before a block or comment tag on its own line are dropped), "-" strips all whitespace on that side of
// a tag, "+" keeps it. Newlines are normalised to "\n" and one trailing newline of the template is dropped, as
// Jinja does. Comments disappear; {% raw %} blocks become text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/template_error.h"

namespace tessera::chat::jinja {

enum class TokenKind : uint8_t {
  Text,           // literal template text (value: the text)
  VariableBegin,  // {{
  VariableEnd,    // }}
  BlockBegin,     // {%
  BlockEnd,       // %}
  Name,
  String,   // value: the decoded string
  Integer,  // value: the digits, underscores removed
  Float,    // value: the literal, underscores removed
  Operator,
  End,
};

struct Token {
  TokenKind kind;
  std::string value;
  int line;
};

// Throws chat::TemplateError for an unterminated tag, comment, string or raw block, and for characters Jinja rejects.
std::vector<Token> tokenize(std::string_view source);

}  // namespace tessera::chat::jinja
