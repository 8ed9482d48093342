#include "chat/jinja_unicode.h"

#include <algorithm>

namespace tessera::chat::jinja {

uint32_t decode_utf8(std::string_view s, size_t pos, size_t* length) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(pos);
  *length = 1;
  if (lead < 0x80) return lead;
  size_t n = 0;
  uint32_t cp = 0;
  if ((lead & 0xE0) == 0xC0)
    n = 2, cp = lead & 0x1F;
  else if ((lead & 0xF0) == 0xE0)
    n = 3, cp = lead & 0x0F;
  else if ((lead & 0xF8) == 0xF0)
    n = 4, cp = lead & 0x07;
  else
    return lead;
  if (pos + n > s.size()) return lead;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(pos + k) & 0xC0) != 0x80) return lead;
    cp = (cp << 6) | (byte(pos + k) & 0x3F);
  }
  *length = n;
  return cp;
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<uint8_t>(c) < 0x80; });
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len, ++n) decode_utf8(s, pos, &len);
  return n;
}

std::vector<size_t> code_point_offsets(std::string_view s) {
  std::vector<size_t> offsets;
  offsets.reserve(s.size() + 1);
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    offsets.push_back(pos);
    decode_utf8(s, pos, &len);
  }
  offsets.push_back(s.size());
  return offsets;
}

bool is_python_space(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::u32string to_code_points(std::string_view s) {
  std::u32string out;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) out.push_back(decode_utf8(s, pos, &len));
  return out;
}

namespace {

bool strips(uint32_t cp, const std::u32string* chars) {
  return chars ? chars->find(static_cast<char32_t>(cp)) != std::u32string::npos : is_python_space(cp);
}

}  // namespace

size_t lstrip_offset(std::string_view s, const std::u32string* chars) {
  size_t pos = 0, len = 0;
  while (pos < s.size() && strips(decode_utf8(s, pos, &len), chars)) pos += len;
  return pos;
}

size_t rstrip_end(std::string_view s, const std::u32string* chars) {
  const std::vector<size_t> offsets = code_point_offsets(s);
  size_t k = offsets.size() - 1;  // index of the end offset
  size_t len = 0;
  while (k > 0 && strips(decode_utf8(s, offsets[k - 1], &len), chars)) --k;
  return offsets[k];
}

}  // namespace tessera::chat::jinja
