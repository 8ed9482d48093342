// Code point helpers for the Python string behaviours templates rely on: len() and slicing count code points,
// strip() and split() use Python's whitespace. Invalid UTF-8 bytes count as one code point each, so hostile
// input cannot make a position run past the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "util/utf8.h"

namespace tessera::chat::jinja {

// The code point at s[pos] and its length in bytes (an invalid byte: itself, length 1).
uint32_t decode_utf8(std::string_view s, size_t pos, size_t* length);
using util::append_utf8;
bool is_ascii(std::string_view s);
size_t count_code_points(std::string_view s);
// The byte offset of every code point, plus s.size() at the end.
std::vector<size_t> code_point_offsets(std::string_view s);
// Python's str.isspace() for one code point.
bool is_python_space(uint32_t cp);
// The byte ranges of s without leading / trailing Python whitespace (or without the code points in `chars`).
size_t lstrip_offset(std::string_view s, const std::u32string* chars);
size_t rstrip_end(std::string_view s, const std::u32string* chars);
std::u32string to_code_points(std::string_view s);

}  // namespace tessera::chat::jinja
