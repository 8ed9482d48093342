// Runs a parsed template the way Jinja runs it under Hugging Face transformers (ImmutableSandboxedEnvironment,
// trim_blocks, lstrip_blocks, loopcontrols; tojson without escaping; raise_exception and strftime_now).
//
// Scoping follows Jinja: every for-loop iteration is a new scope (a {% set %} inside a loop is gone in the next
// iteration and after the loop; namespace() carries state across), {% if %} is not a scope, and a macro sees its
// arguments and the template's top-level variables.
//
// Limits end hostile templates with a TemplateError: a work budget (statements, expressions and bytes built),
// nesting depth, macro recursion, and the size of strings and lists.
#pragma once

#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_ast.h"
#include "chat/jinja_value.h"

namespace tessera::chat::jinja {

inline constexpr size_t kMaxStringBytes = size_t{16} << 20;  // any string, the output included
inline constexpr size_t kMaxSequenceLength = 1'000'000;
inline constexpr uint64_t kMaxWork = 5'000'000;
inline constexpr int kMaxMacroDepth = 64;
inline constexpr int kMaxRecursion = 400;

struct RenderContext {
  std::vector<std::pair<std::string, Value>> variables;  // messages, bos_token, add_generation_prompt, ...
  std::tm now{};                                         // the local time strftime_now formats
  int microsecond = 0;                                   // for %f
};

// Throws chat::TemplateError for anything the template cannot do, chat::TemplateRaised for raise_exception().
Text render(const Body& body, const RenderContext& context);

}  // namespace tessera::chat::jinja
