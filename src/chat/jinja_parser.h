// Parses template source into statements, following Jinja's grammar and operator precedence. Statements other
// than if/for/set/macro/filter/break/continue (and transformers' generation block), and filters or tests the
// interpreter does not implement, are refused here with a TemplateError naming them and their line.
#pragma once

#include <string_view>

#include "chat/jinja_ast.h"

namespace tessera::chat::jinja {

// Nesting limits that keep a hostile template from exhausting the stack while it is parsed, run or destroyed.
inline constexpr int kMaxExprDepth = 200;
inline constexpr int kMaxBlockDepth = 100;

Body parse(std::string_view source);

// The filters and tests the interpreter implements (jinja_interpreter.cpp).
bool is_supported_filter(std::string_view name);
bool is_supported_test(std::string_view name);

}  // namespace tessera::chat::jinja
