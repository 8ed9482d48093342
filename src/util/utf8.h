// UTF-8 encoding shared by the tokenizer and the chat template interpreter.
#pragma once

#include <cstdint>
#include <string>

namespace tessera::util {

// Appends the code point's UTF-8 bytes (1 to 4) to out.
void append_utf8(std::string& out, uint32_t codepoint);

}  // namespace tessera::util
