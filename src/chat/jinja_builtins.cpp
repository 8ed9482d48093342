#include "chat/jinja_builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <optional>

#include "chat/jinja_parser.h"
#include "chat/jinja_unicode.h"
#include "chat/template_error.h"

namespace tessera::chat::jinja {

void Budget::charge(uint64_t units) {
  used_ += units;
  if (used_ > kMaxWork)
    throw ValueError(fmt::format("the template did more than {} steps of work (a loop that does not end?)", kMaxWork));
}

void Budget::string(size_t bytes) {
  if (bytes > kMaxStringBytes)
    throw ValueError(fmt::format("a string of {} bytes is over the limit of {} bytes", bytes, kMaxStringBytes));
  charge(bytes / 16 + 1);
}

void Budget::sequence(size_t n) {
  if (n > kMaxSequenceLength)
    throw ValueError(fmt::format("a list of {} items is over the limit of {} items", n, kMaxSequenceLength));
  charge(n + 1);
}

namespace {

// ---- arguments ----

// Looks up the argument at `index` or called `name`; refuses unknown keywords and too many positionals.
class ArgReader {
 public:
  ArgReader(const Args& args, std::string_view what, std::initializer_list<std::string_view> names)
      : args_(args), names_(names.begin(), names.end()) {
    if (args.positional.size() > names.size())
      throw ValueError(
          fmt::format("{} takes at most {} argument(s), got {}", what, names.size(), args.positional.size()));
    for (const auto& [k, v] : args.keyword) {
      if (std::find(names.begin(), names.end(), k) == names.end())
        throw ValueError(fmt::format("{} got an unexpected keyword argument '{}'", what, k));
    }
  }
  const Value* get(size_t index) const {
    if (index < args_.positional.size()) return &args_.positional[index];
    const std::string_view name = names_[index];
    for (const auto& [k, v] : args_.keyword)
      if (k == name) return &v;
    return nullptr;
  }

 private:
  const Args& args_;
  std::vector<std::string_view> names_;
};

int64_t to_int_arg(const Value& v, std::string_view what) {
  if (v.is_int()) return v.as_int();
  if (v.is_bool()) return v.as_bool() ? 1 : 0;
  throw ValueError(fmt::format("{} must be an integer, not {}", what, v.type_name()));
}

const Value& string_arg(const Value& v, std::string_view what) {
  if (!v.is_string()) throw ValueError(fmt::format("{} must be a string, not {}", what, v.type_name()));
  return v;
}

// ---- strings ----

Text derived(std::string bytes, bool content) {
  Text t(std::move(bytes));
  if (content) t.mark_all_content();
  return t;
}

// Code points whose case Python would change and this interpreter does not map (it maps ASCII only).
bool is_cased_non_ascii(uint32_t cp) {
  return cp == 0xB5 || (cp >= 0xC0 && cp <= 0x2AF && cp != 0xD7 && cp != 0xF7) || (cp >= 0x370 && cp <= 0x58F) ||
         (cp >= 0x10A0 && cp <= 0x10FF) || (cp >= 0x13A0 && cp <= 0x13FF) || (cp >= 0x1C80 && cp <= 0x1CBF) ||
         (cp >= 0x1D00 && cp <= 0x1FFF) || (cp >= 0x2100 && cp <= 0x218F) || (cp >= 0x24B6 && cp <= 0x24E9) ||
         (cp >= 0x2C00 && cp <= 0x2D2F) || (cp >= 0xA640 && cp <= 0xA7FF) || (cp >= 0xAB30 && cp <= 0xABBF) ||
         (cp >= 0xFB00 && cp <= 0xFB17) || (cp >= 0xFF21 && cp <= 0xFF5A) || (cp >= 0x10400 && cp <= 0x1E95F);
}

void require_ascii_case(std::string_view s, std::string_view what) {
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    if (is_cased_non_ascii(decode_utf8(s, pos, &len)))
      throw ValueError(fmt::format("{} of non-ASCII letters is not supported", what));
  }
}

char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; }
char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }
bool ascii_is_upper(char c) { return c >= 'A' && c <= 'Z'; }
bool ascii_is_lower(char c) { return c >= 'a' && c <= 'z'; }

std::string upper(std::string_view s, std::string_view what) {
  require_ascii_case(s, what);
  std::string out(s);
  for (char& c : out) c = ascii_upper(c);
  return out;
}

std::string lower(std::string_view s, std::string_view what) {
  require_ascii_case(s, what);
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

// Python's str.title(): a letter after a cased letter is lowered, any other letter is raised.
std::string python_title(std::string_view s) {
  require_ascii_case(s, "title()");
  std::string out(s);
  bool previous_cased = false;
  for (char& c : out) {
    if (ascii_is_upper(c)) {
      if (previous_cased) c = ascii_lower(c);
      previous_cased = true;
    } else if (ascii_is_lower(c)) {
      if (!previous_cased) c = ascii_upper(c);
      previous_cased = true;
    } else {
      previous_cased = false;
    }
  }
  return out;
}

std::string python_capitalize(std::string_view s) {
  std::string out = lower(s, "capitalize()");
  if (!out.empty()) out[0] = ascii_upper(out[0]);
  return out;
}

// Jinja's title filter: words start after runs of whitespace, '-', '(', '{', '[' or '<'; each word's first
// character is raised and the rest lowered.
std::string jinja_title(std::string_view s) {
  require_ascii_case(s, "title");
  std::string out;
  bool word_start = true;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    const uint32_t cp = decode_utf8(s, pos, &len);
    const bool separator = is_python_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    if (separator) {
      out.append(s.substr(pos, len));
      word_start = true;
    } else if (len == 1) {
      out.push_back(word_start ? ascii_upper(s[pos]) : ascii_lower(s[pos]));
      word_start = false;
    } else {
      out.append(s.substr(pos, len));
      word_start = false;
    }
  }
  return out;
}

Text strip_text(const Text& t, const Value* chars_arg, bool left, bool right) {
  std::u32string chars;
  const std::u32string* chars_ptr = nullptr;
  if (chars_arg && !chars_arg->is_none()) {
    chars = to_code_points(string_arg(*chars_arg, "strip characters").str());
    chars_ptr = &chars;
  }
  const std::string_view s = t.bytes;
  const size_t begin = left ? lstrip_offset(s, chars_ptr) : 0;
  const size_t end = right ? begin + rstrip_end(s.substr(begin), chars_ptr) : s.size();
  return t.substr(begin, end - begin);
}

bool is_line_break(uint32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D || cp == 0x1E || cp == 0x85 ||
         cp == 0x2028 || cp == 0x2029;
}

// Python's str.splitlines().
std::vector<Text> split_lines(const Text& t) {
  std::vector<Text> lines;
  const std::string_view s = t.bytes;
  size_t start = 0;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    const uint32_t cp = decode_utf8(s, pos, &len);
    if (!is_line_break(cp)) continue;
    lines.push_back(t.substr(start, pos - start));
    if (cp == '\r' && pos + 1 < s.size() && s[pos + 1] == '\n') len = 2;
    start = pos + len;
  }
  if (start < s.size()) lines.push_back(t.substr(start, s.size() - start));
  return lines;
}

// Python's str.split / str.rsplit.
std::vector<Value> split_text(const Text& t, const Value* sep_arg, const Value* max_arg, bool from_right) {
  const int64_t max_split = max_arg ? to_int_arg(*max_arg, "maxsplit") : -1;
  const std::string_view s = t.bytes;
  std::vector<Value> parts;
  if (sep_arg && !sep_arg->is_none()) {
    const std::string& sep = string_arg(*sep_arg, "separator").str();
    if (sep.empty()) throw ValueError("empty separator");
    std::vector<std::pair<size_t, size_t>> pieces;  // byte ranges
    if (!from_right) {
      size_t start = 0;
      for (int64_t n = 0; max_split < 0 || n < max_split; ++n) {
        const size_t hit = s.find(sep, start);
        if (hit == std::string_view::npos) break;
        pieces.emplace_back(start, hit);
        start = hit + sep.size();
      }
      pieces.emplace_back(start, s.size());
    } else {
      size_t end = s.size();
      for (int64_t n = 0; max_split < 0 || n < max_split; ++n) {
        if (end < sep.size()) break;
        const size_t hit = s.rfind(sep, end - sep.size());
        if (hit == std::string_view::npos) break;
        pieces.emplace_back(hit + sep.size(), end);
        end = hit;
      }
      pieces.emplace_back(0, end);
      std::reverse(pieces.begin(), pieces.end());
    }
    for (const auto& [a, b] : pieces) parts.push_back(Value::string(t.substr(a, b - a)));
    return parts;
  }
  // Runs of whitespace separate; leading and trailing whitespace give no empty parts.
  const std::vector<size_t> offsets = code_point_offsets(s);
  const size_t n_cp = offsets.size() - 1;
  auto space_at = [&](size_t i) {
    size_t len = 0;
    return is_python_space(decode_utf8(s, offsets[i], &len));
  };
  std::vector<std::pair<size_t, size_t>> pieces;  // code point ranges
  if (!from_right) {
    size_t i = 0;
    int64_t n = 0;
    while (true) {
      while (i < n_cp && space_at(i)) ++i;
      if (i >= n_cp) break;
      if (max_split >= 0 && n >= max_split) {
        pieces.emplace_back(i, n_cp);
        break;
      }
      size_t j = i;
      while (j < n_cp && !space_at(j)) ++j;
      pieces.emplace_back(i, j);
      ++n;
      i = j;
    }
  } else {
    size_t i = n_cp;
    int64_t n = 0;
    while (true) {
      while (i > 0 && space_at(i - 1)) --i;
      if (i == 0) break;
      if (max_split >= 0 && n >= max_split) {
        pieces.emplace_back(0, i);
        break;
      }
      size_t j = i;
      while (j > 0 && !space_at(j - 1)) --j;
      pieces.emplace_back(j, i);
      ++n;
      i = j;
    }
    std::reverse(pieces.begin(), pieces.end());
  }
  for (const auto& [a, b] : pieces) parts.push_back(Value::string(t.substr(offsets[a], offsets[b] - offsets[a])));
  return parts;
}

Text replace_text(const Text& t, const std::string& old_s, const Text& new_t, int64_t count, Budget& budget) {
  const std::string_view s = t.bytes;
  std::string out;
  int64_t done = 0;
  if (old_s.empty()) {  // Python inserts the replacement before every code point and at the end
    for (size_t pos = 0, len = 0; pos <= s.size(); pos += len) {
      if (count < 0 || done < count) {
        out += new_t.bytes;
        ++done;
        budget.string(out.size());
      }
      if (pos == s.size()) break;
      decode_utf8(s, pos, &len);
      out.append(s.substr(pos, len));
    }
  } else {
    size_t start = 0;
    while (count < 0 || done < count) {
      const size_t hit = s.find(old_s, start);
      if (hit == std::string_view::npos) break;
      out.append(s.substr(start, hit - start));
      out += new_t.bytes;
      budget.string(out.size());
      start = hit + old_s.size();
      ++done;
    }
    out.append(s.substr(start));
  }
  budget.string(out.size());
  return derived(std::move(out), t.has_content() || new_t.has_content());
}

// A code point index, as Python's str.find returns it.
int64_t code_point_index(std::string_view s, size_t byte_pos) {
  return static_cast<int64_t>(count_code_points(s.substr(0, byte_pos)));
}

// ---- the known names ----

constexpr std::string_view kPythonStrMethods[] = {
    "capitalize",   "casefold",   "center",    "count",       "encode",    "endswith",     "expandtabs",   "find",
    "format",       "format_map", "index",     "isalnum",     "isalpha",   "isascii",      "isdecimal",    "isdigit",
    "isidentifier", "islower",    "isnumeric", "isprintable", "isspace",   "istitle",      "isupper",      "join",
    "ljust",        "lower",      "lstrip",    "maketrans",   "partition", "removeprefix", "removesuffix", "replace",
    "rfind",        "rindex",     "rjust",     "rpartition",  "rsplit",    "rstrip",       "split",        "splitlines",
    "startswith",   "strip",      "swapcase",  "title",       "translate", "upper",        "zfill"};
constexpr std::string_view kStrMethods[] = {
    "capitalize", "count", "endswith",   "find",       "isalnum",      "isalpha",      "isdigit", "islower", "isspace",
    "isupper",    "join",  "lower",      "lstrip",     "removeprefix", "removesuffix", "replace", "rfind",   "rsplit",
    "rstrip",     "split", "splitlines", "startswith", "strip",        "title",        "upper"};
constexpr std::string_view kPythonDictMethods[] = {"clear", "copy",    "fromkeys",   "get",    "items", "keys",
                                                   "pop",   "popitem", "setdefault", "update", "values"};
constexpr std::string_view kDictMethods[] = {"get", "items", "keys", "values"};
constexpr std::string_view kPythonListMethods[] = {"append", "clear", "copy",   "count",   "extend", "index",
                                                   "insert", "pop",   "remove", "reverse", "sort"};

template <size_t N>
bool listed(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

Value bound_method(const Value& self, const std::string& name) {
  auto f = std::make_shared<Function>();
  f->kind = Function::Kind::Method;
  f->name = name;
  f->self = self;
  return Value::function(std::move(f));
}

std::string object_name(const Value& v) { return v.type_name() + " object"; }

}  // namespace

// ---- attribute and item access ----

Value get_attribute(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) throw ValueError(obj.undefined_name());
  if (name.starts_with("__")) throw ValueError(fmt::format("unsupported attribute '{}'", name));
  if (obj.is_dict()) {
    if (listed(kDictMethods, name)) return bound_method(obj, name);
    if (listed(kPythonDictMethods, name)) throw ValueError(fmt::format("unsupported dict method '{}'", name));
    if (const Value* v = obj.dict().find(Value::string(name))) return *v;
  } else if (obj.is_namespace()) {
    if (const Value* v = obj.ns().attributes.find(Value::string(name))) return *v;
  } else if (obj.is_string()) {
    if (listed(kStrMethods, name)) return bound_method(obj, name);
    if (listed(kPythonStrMethods, name)) throw ValueError(fmt::format("unsupported string method '{}'", name));
  } else if (obj.is_sequence()) {
    if (listed(kPythonListMethods, name)) throw ValueError(fmt::format("unsupported list method '{}'", name));
  }
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_name(obj), name));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) throw ValueError(obj.undefined_name());
  if (obj.is_dict()) {
    if (const Value* v = obj.dict().find(key)) return *v;
    if (key.is_string()) return get_attribute(obj, key.str());
  } else if (obj.is_namespace()) {
    if (key.is_string()) return get_attribute(obj, key.str());
  } else if (obj.is_sequence() || obj.is_string()) {
    if (key.is_int() || key.is_bool()) {
      int64_t i = key.is_int() ? key.as_int() : (key.as_bool() ? 1 : 0);
      if (obj.is_sequence()) {
        const auto n = static_cast<int64_t>(obj.items().size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
      } else {
        const std::vector<size_t> offsets = code_point_offsets(obj.str());
        const auto n = static_cast<int64_t>(offsets.size() - 1);
        if (i < 0) i += n;
        if (i >= 0 && i < n) {
          const size_t a = offsets[static_cast<size_t>(i)], b = offsets[static_cast<size_t>(i) + 1];
          return Value::string(obj.text().substr(a, b - a));
        }
      }
      return Value::undefined(fmt::format("'{}' has no element {}", object_name(obj), repr(key)));
    }
    if (key.is_string()) return get_attribute(obj, key.str());
  }
  return Value::undefined(fmt::format("'{}' has no element {}", object_name(obj), repr(key)));
}

std::vector<Value> iterate(const Value& v) {
  if (v.is_undefined()) return {};
  if (v.is_sequence()) return v.items();
  if (v.is_dict()) {
    std::vector<Value> keys;
    for (const auto& [k, x] : v.dict().entries) keys.push_back(k);
    return keys;
  }
  if (v.is_string()) {
    std::vector<Value> chars;
    const std::vector<size_t> offsets = code_point_offsets(v.str());
    for (size_t i = 0; i + 1 < offsets.size(); ++i)
      chars.push_back(Value::string(v.text().substr(offsets[i], offsets[i + 1] - offsets[i])));
    return chars;
  }
  throw ValueError(fmt::format("'{}' object is not iterable", v.type_name()));
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string())
      throw ValueError(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_dict()) return container.dict().find(item) != nullptr;
  if (container.is_namespace()) throw ValueError("argument of type 'Namespace' is not iterable");
  for (const Value& x : iterate(container))
    if (equals(x, item)) return true;
  return false;
}

// ---- string methods ----

Value call_method(const Value& self, std::string_view name, const Args& args, Budget& budget) {
  const std::string what = fmt::format("{}.{}()", self.type_name(), name);
  if (self.is_dict()) {
    const Dict& d = self.dict();
    if (name == "get") {
      ArgReader a(args, what, {"key", "default"});
      if (!a.get(0)) throw ValueError(what + " needs a key");
      if (const Value* v = d.find(*a.get(0))) return *v;
      return a.get(1) ? *a.get(1) : Value::none();
    }
    ArgReader a(args, what, {});
    std::vector<Value> out;
    budget.sequence(d.entries.size());
    for (const auto& [k, v] : d.entries) {
      if (name == "items")
        out.push_back(Value::sequence({k, v}, SequenceKind::Tuple));
      else
        out.push_back(name == "keys" ? k : v);
    }
    return Value::sequence(std::move(out), name == "items"  ? SequenceKind::DictItems
                                           : name == "keys" ? SequenceKind::DictKeys
                                                            : SequenceKind::DictValues);
  }
  const Text& t = self.text();
  const std::string& s = t.bytes;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    ArgReader a(args, what, {"chars"});
    return Value::string(strip_text(t, a.get(0), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    ArgReader a(args, what, {"sep", "maxsplit"});
    std::vector<Value> parts = split_text(t, a.get(0), a.get(1), name == "rsplit");
    budget.sequence(parts.size());
    return Value::sequence(std::move(parts));
  }
  if (name == "splitlines") {
    ArgReader a(args, what, {});
    std::vector<Value> parts;
    for (Text& line : split_lines(t)) parts.push_back(Value::string(std::move(line)));
    budget.sequence(parts.size());
    return Value::sequence(std::move(parts));
  }
  if (name == "startswith" || name == "endswith") {
    ArgReader a(args, what, {"prefix"});
    if (!a.get(0)) throw ValueError(what + " needs an argument");
    std::vector<Value> options = a.get(0)->is_sequence() ? a.get(0)->items() : std::vector<Value>{*a.get(0)};
    for (const Value& o : options) {
      const std::string& p = string_arg(o, what + " argument").str();
      if (name == "startswith" ? s.starts_with(p) : s.ends_with(p)) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    ArgReader a(args, what, {});
    std::string out = name == "upper"   ? upper(s, "upper()")
                      : name == "lower" ? lower(s, "lower()")
                      : name == "title" ? python_title(s)
                                        : python_capitalize(s);
    return Value::string(derived(std::move(out), t.has_content()));
  }
  if (name == "replace") {
    ArgReader a(args, what, {"old", "new", "count"});
    if (!a.get(0) || !a.get(1)) throw ValueError(what + " needs two arguments");
    const int64_t count = a.get(2) ? to_int_arg(*a.get(2), "count") : -1;
    return Value::string(
        replace_text(t, string_arg(*a.get(0), "old").str(), string_arg(*a.get(1), "new").text(), count, budget));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    ArgReader a(args, what, {"sub"});
    if (!a.get(0)) throw ValueError(what + " needs an argument");
    const std::string& sub = string_arg(*a.get(0), "substring").str();
    if (name == "count") {
      if (sub.empty()) return Value::integer(static_cast<int64_t>(count_code_points(s)) + 1);
      int64_t n = 0;
      for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) ++n;
      return Value::integer(n);
    }
    const size_t hit = name == "find" ? s.find(sub) : s.rfind(sub);
    return Value::integer(hit == std::string::npos ? -1 : code_point_index(s, hit));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    ArgReader a(args, what, {"affix"});
    if (!a.get(0)) throw ValueError(what + " needs an argument");
    const std::string& affix = string_arg(*a.get(0), "argument").str();
    if (name == "removeprefix" && s.starts_with(affix)) return Value::string(t.substr(affix.size(), std::string::npos));
    if (name == "removesuffix" && !affix.empty() && s.ends_with(affix))
      return Value::string(t.substr(0, s.size() - affix.size()));
    return self;
  }
  if (name == "join") {
    ArgReader a(args, what, {"iterable"});
    if (!a.get(0)) throw ValueError(what + " needs an argument");
    Text out;
    const std::vector<Value> items = iterate(*a.get(0));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string())
        throw ValueError(fmt::format("sequence item {}: expected str instance, {} found", i, items[i].type_name()));
      if (i) out.append(t);
      out.append(items[i].text());
      budget.string(out.bytes.size());
    }
    return Value::string(std::move(out));
  }
  // isalnum, isalpha, isdigit, islower, isupper, isspace
  ArgReader a(args, what, {});
  if (name == "isspace") {
    if (s.empty()) return Value::boolean(false);
    return Value::boolean(lstrip_offset(s, nullptr) == s.size());
  }
  if (!is_ascii(s)) throw ValueError(fmt::format("{} of non-ASCII text is not supported", what));
  auto all = [&](auto pred) { return !s.empty() && std::all_of(s.begin(), s.end(), pred); };
  if (name == "isdigit") return Value::boolean(all([](char c) { return c >= '0' && c <= '9'; }));
  if (name == "isalpha") return Value::boolean(all([](char c) { return ascii_is_lower(c) || ascii_is_upper(c); }));
  if (name == "isalnum")
    return Value::boolean(all([](char c) { return ascii_is_lower(c) || ascii_is_upper(c) || (c >= '0' && c <= '9'); }));
  const bool any_cased = std::any_of(s.begin(), s.end(), [](char c) { return ascii_is_lower(c) || ascii_is_upper(c); });
  if (name == "islower") return Value::boolean(any_cased && std::none_of(s.begin(), s.end(), ascii_is_upper));
  return Value::boolean(any_cased && std::none_of(s.begin(), s.end(), ascii_is_lower));  // isupper
}

// ---- global functions ----

bool is_global_function(std::string_view name) {
  return name == "range" || name == "namespace" || name == "dict" || name == "raise_exception" ||
         name == "strftime_now";
}

namespace {

std::string strftime_text(const std::string& format, const RenderContext& context) {
  if (format.size() > 1000) throw ValueError("strftime_now format is longer than 1000 characters");
  // Python handles %f, %z and %Z itself (a naive datetime has no zone); the rest is C's strftime.
  std::string c_format;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      const char k = format[i + 1];
      if (k == 'f') {
        c_format += fmt::format("{:06d}", context.microsecond);
        ++i;
        continue;
      }
      if (k == 'z' || k == 'Z') {
        ++i;
        continue;
      }
      c_format += format.substr(i, 2);
      ++i;
      continue;
    }
    c_format.push_back(format[i]);
  }
  if (c_format.empty()) return "";
  // strftime() gives 0 when the buffer is too small (glibc takes field widths such as %0500Y).
  for (size_t size = c_format.size() * 16 + 64; size <= (size_t{1} << 20); size *= 8) {
    std::string out(size, '\0');
    const size_t n = std::strftime(out.data(), out.size(), c_format.c_str(), &context.now);
    if (n > 0) {
      out.resize(n);
      return out;
    }
  }
  throw ValueError("strftime_now: the formatted time is empty or over 1 MiB");
}

Dict dict_from_args(const Args& args, std::string_view what) {
  Dict d;
  if (args.positional.size() > 1) throw ValueError(fmt::format("{} takes at most 1 positional argument", what));
  if (!args.positional.empty()) {
    const Value& init = args.positional[0];
    if (init.is_dict()) {
      d = init.dict();
    } else if (init.is_namespace()) {
      d = init.ns().attributes;
    } else {
      for (const Value& pair : iterate(init)) {
        const std::vector<Value> kv = iterate(pair);
        if (kv.size() != 2) throw ValueError(fmt::format("{}: each item must be a pair", what));
        d.set(kv[0], kv[1]);
      }
    }
  }
  for (const auto& [k, v] : args.keyword) d.set(Value::string(k), v);
  return d;
}

}  // namespace

Value call_global(std::string_view name, const Args& args, Budget& budget, const RenderContext& context) {
  if (name == "range") {
    if (!args.keyword.empty()) throw ValueError("range() takes no keyword arguments");
    const auto& p = args.positional;
    if (p.empty() || p.size() > 3) throw ValueError("range() takes 1 to 3 arguments");
    int64_t start = 0, stop = 0, step = 1;
    if (p.size() == 1) {
      stop = to_int_arg(p[0], "range() argument");
    } else {
      start = to_int_arg(p[0], "range() argument");
      stop = to_int_arg(p[1], "range() argument");
      if (p.size() == 3) step = to_int_arg(p[2], "range() argument");
    }
    if (step == 0) throw ValueError("range() arg 3 must not be zero");
    // The count in unsigned arithmetic, so extreme bounds cannot overflow.
    uint64_t count = 0;
    if (step > 0 && start < stop) {
      count = (static_cast<uint64_t>(stop) - static_cast<uint64_t>(start) - 1) / static_cast<uint64_t>(step) + 1;
    } else if (step < 0 && start > stop) {
      count = (static_cast<uint64_t>(start) - static_cast<uint64_t>(stop) - 1) / (0 - static_cast<uint64_t>(step)) + 1;
    }
    if (count > kMaxSequenceLength)
      throw ValueError(fmt::format("range() of {} items is over the limit of {} items", count, kMaxSequenceLength));
    budget.sequence(count);
    std::vector<Value> items;
    items.reserve(count);
    for (uint64_t i = 0; i < count; ++i) items.push_back(Value::integer(start + static_cast<int64_t>(i) * step));
    return Value::sequence(std::move(items));
  }
  if (name == "namespace") return Value::namespace_object(dict_from_args(args, "namespace()"));
  if (name == "dict") return Value::dict(dict_from_args(args, "dict()"));
  if (name == "raise_exception") {
    ArgReader a(args, "raise_exception()", {"message"});
    throw TemplateRaised(a.get(0) ? to_text(*a.get(0)).bytes : std::string());
  }
  // strftime_now
  ArgReader a(args, "strftime_now()", {"format"});
  if (!a.get(0)) throw ValueError("strftime_now() needs a format");
  return Value::string(strftime_text(string_arg(*a.get(0), "strftime_now() format").str(), context));
}

// ---- tests ----

namespace {

constexpr std::string_view kTests[] = {
    "boolean", "callable",    "defined", "divisibleby", "eq",      "equalto",  "even",   "false",    "float",
    "ge",      "greaterthan", "gt",      "in",          "integer", "iterable", "le",     "lessthan", "lower",
    "lt",      "mapping",     "ne",      "none",        "number",  "odd",      "sameas", "sequence", "string",
    "true",    "undefined",   "upper",   "==",          "!=",      "<",        "<=",     ">",        ">="};

}  // namespace

bool is_supported_test(std::string_view name) { return listed(kTests, name); }

bool apply_test(std::string_view name, const Value& v, const Args& args) {
  const std::string what = fmt::format("test '{}'", name);
  auto operand = [&]() -> const Value& {
    ArgReader a(args, what, {"other"});
    if (!a.get(0)) throw ValueError(what + " needs an argument");
    return *a.get(0);
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
  if (name == "sequence") return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
  if (name == "callable") return v.is_function();
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    const std::string& s = v.str();
    require_ascii_case(s, what);
    const bool any_cased =
        std::any_of(s.begin(), s.end(), [](char c) { return ascii_is_lower(c) || ascii_is_upper(c); });
    return any_cased && (name == "lower" ? std::none_of(s.begin(), s.end(), ascii_is_upper)
                                         : std::none_of(s.begin(), s.end(), ascii_is_lower));
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    const int64_t x = to_int_arg(v, what + " subject");
    if (name == "odd") return (x % 2) != 0;
    if (name == "even") return (x % 2) == 0;
    const int64_t d = to_int_arg(operand(), what + " argument");
    if (d == 0) throw ValueError("integer division or modulo by zero");
    return d == -1 || x % d == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, operand());
  if (name == "ne" || name == "!=") return !equals(v, operand());
  if (name == "lt" || name == "lessthan" || name == "<") return less_than(v, operand());
  if (name == "gt" || name == "greaterthan" || name == ">") return less_than(operand(), v);
  if (name == "le" || name == "<=") return less_than(v, operand()) || equals(v, operand());
  if (name == "ge" || name == ">=") return less_than(operand(), v) || equals(v, operand());
  if (name == "in") return contains(operand(), v);
  // sameas: Python's `is`; for the immutable scalars a template can make, that is equality of type and value.
  const Value& o = operand();
  if (v.is_sequence() && o.is_sequence()) return &v.seq() == &o.seq();
  if (v.is_dict() && o.is_dict()) return &v.dict() == &o.dict();
  if (v.is_string() || o.is_string()) return false;
  return v.type_name() == o.type_name() && equals(v, o);
}

// ---- filters ----

namespace {

constexpr std::string_view kFilters[] = {
    "abs",        "attr",   "capitalize", "count",  "d",          "default", "e",       "escape", "first",
    "float",      "indent", "int",        "items",  "join",       "last",    "length",  "list",   "lower",
    "map",        "max",    "min",        "reject", "rejectattr", "replace", "reverse", "safe",   "select",
    "selectattr", "sort",   "string",     "sum",    "title",      "tojson",  "trim",    "upper"};

// Jinja's attribute paths for map/selectattr/sort/sum/min/max/join: "a.b.0" looks up item by item.
Value attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    int64_t index = 0;
    const auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
    const bool numeric = !part.empty() && ec == std::errc() && p == part.data() + part.size();
    cur = get_item(cur, numeric ? Value::integer(index) : Value::string(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

int64_t length_of(const Value& v) {
  if (v.is_undefined()) return 0;
  if (v.is_string()) return static_cast<int64_t>(count_code_points(v.str()));
  if (v.is_sequence()) {
    if (v.seq().kind == SequenceKind::Generator) throw ValueError("object of type 'generator' has no len()");
    return static_cast<int64_t>(v.items().size());
  }
  if (v.is_dict()) return static_cast<int64_t>(v.dict().entries.size());
  throw ValueError(fmt::format("object of type '{}' has no len()", v.type_name()));
}

Text escape_html(const Text& t) {
  std::string out;
  for (char c : t.bytes) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return derived(std::move(out), t.has_content());
}

Text indent_text(const Text& t, const Value* width_arg, const Value* first_arg, const Value* blank_arg,
                 Budget& budget) {
  std::string indentation;
  if (width_arg && width_arg->is_string()) {
    indentation = width_arg->str();
  } else {
    const int64_t width = width_arg ? to_int_arg(*width_arg, "indent width") : 4;
    if (width > 1000) throw ValueError("indent width over 1000");
    indentation.assign(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
  }
  const bool first = first_arg && truthy(*first_arg);
  const bool blank = blank_arg && truthy(*blank_arg);
  Text with_newline = t;
  with_newline.append("\n");  // as Jinja does, so that splitlines() sees a final empty line
  std::vector<Text> lines = split_lines(with_newline);
  Text out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) {
      out.append("\n");
      if (blank || !lines[i].bytes.empty()) out.append(indentation);
    }
    out.append(lines[i]);
    budget.string(out.bytes.size());
  }
  if (first) {
    Text prefixed(indentation);
    prefixed.append(out);
    out = std::move(prefixed);
  }
  return out;
}

std::optional<int64_t> parse_python_int(std::string_view s) {
  const size_t a = lstrip_offset(s, nullptr);
  s = s.substr(a, rstrip_end(s.substr(a), nullptr));
  std::string digits;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_' && i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
        std::isdigit(static_cast<unsigned char>(s[i + 1])))
      continue;
    digits.push_back(s[i]);
  }
  if (!digits.empty() && digits[0] == '+') digits.erase(0, 1);
  int64_t v = 0;
  const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_python_float(std::string_view s) {
  const size_t a = lstrip_offset(s, nullptr);
  std::string t(s.substr(a, rstrip_end(s.substr(a), nullptr)));
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) return std::nullopt;
  return d;
}

// A key for sort/min/max: strings compared case-insensitively unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(lower(v.str(), "case-insensitive comparison"));
  return v;
}

Value add_numbers(const Value& a, const Value& b) {
  if (!a.is_number() || !b.is_number())
    throw ValueError(fmt::format("unsupported operand type(s) for +: '{}' and '{}'", a.type_name(), b.type_name()));
  if (a.is_float() || b.is_float()) {
    auto d = [](const Value& x) {
      return x.is_float() ? x.as_float() : static_cast<double>(x.is_int() ? x.as_int() : x.as_bool());
    };
    return Value::floating(d(a) + d(b));
  }
  const int64_t x = a.is_int() ? a.as_int() : a.as_bool(), y = b.is_int() ? b.as_int() : b.as_bool();
  int64_t r = 0;
  if (__builtin_add_overflow(x, y, &r)) throw ValueError("integer overflow");
  return Value::integer(r);
}

std::vector<Value> select_items(const Value& seq, const Args& args, bool by_attribute, bool keep, Budget& budget,
                                std::string_view what) {
  const auto& p = args.positional;
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (p.empty()) throw ValueError(fmt::format("{} needs an attribute", what));
    attribute = string_arg(p[0], "attribute").str();
    next = 1;
  }
  if (!args.keyword.empty()) throw ValueError(fmt::format("{} takes no keyword arguments", what));
  std::string test;
  Args test_args;
  if (next < p.size()) {
    test = string_arg(p[next], "test name").str();
    if (!is_supported_test(test)) throw ValueError(fmt::format("unsupported test '{}'", test));
    test_args.positional.assign(p.begin() + static_cast<std::ptrdiff_t>(next) + 1, p.end());
  }
  std::vector<Value> out;
  for (const Value& item : iterate(seq)) {
    budget.charge(1);
    const Value subject = by_attribute ? attribute_path(item, attribute) : item;
    const bool passes = test.empty() ? truthy(subject) : apply_test(test, subject, test_args);
    if (passes == keep) out.push_back(item);
  }
  return out;
}

Value json_filter(const Value& v, const Args& args, Budget& budget) {
  ArgReader a(args, "filter 'tojson'", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  const bool ensure_ascii = a.get(0) && truthy(*a.get(0));
  if (const Value* indent = a.get(1); indent && !indent->is_none()) {
    if (indent->is_string()) {
      o.indent_text = indent->str();
      o.indent = 0;
    } else {
      const int64_t n = to_int_arg(*indent, "tojson indent");
      if (n > 1000) throw ValueError("tojson indent over 1000");
      o.indent = static_cast<int>(std::max<int64_t>(n, 0));
    }
  }
  if (const Value* sep = a.get(2); sep && !sep->is_none()) {
    const std::vector<Value> parts = iterate(*sep);
    if (parts.size() != 2) throw ValueError("tojson separators must be a pair of strings");
    o.item_separator = string_arg(parts[0], "separator").str();
    o.key_separator = string_arg(parts[1], "separator").str();
    if (o.item_separator.empty()) throw ValueError("an empty tojson item separator is not supported");
  }
  o.sort_keys = a.get(3) && truthy(*a.get(3));
  std::string json = to_json(v, o);
  if (ensure_ascii) {
    std::string ascii;
    for (size_t pos = 0, len = 0; pos < json.size(); pos += len) {
      uint32_t cp = decode_utf8(json, pos, &len);
      if (cp < 0x80) {
        ascii.push_back(json[pos]);
      } else if (cp < 0x10000) {
        ascii += fmt::format("\\u{:04x}", cp);
      } else {
        cp -= 0x10000;
        ascii += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      }
    }
    json = std::move(ascii);
  }
  budget.string(json.size());
  Text out(std::move(json));
  if (has_content(v)) out.mark_all_content();
  return Value::string(std::move(out));
}

}  // namespace

bool is_supported_filter(std::string_view name) { return listed(kFilters, name); }

Value apply_filter(std::string_view name, const Value& v, const Args& args, Budget& budget) {
  const std::string what = fmt::format("filter '{}'", name);
  if (name == "default" || name == "d") {
    ArgReader a(args, what, {"default_value", "boolean"});
    const bool boolean = a.get(1) && truthy(*a.get(1));
    if (v.is_undefined() || (boolean && !truthy(v))) return a.get(0) ? *a.get(0) : Value::string("");
    return v;
  }
  if (name == "length" || name == "count") {
    ArgReader a(args, what, {});
    return Value::integer(length_of(v));
  }
  if (name == "string") {
    ArgReader a(args, what, {});
    return Value::string(to_text(v));
  }
  if (name == "safe") {
    ArgReader a(args, what, {});
    return v;
  }
  if (name == "trim") {
    ArgReader a(args, what, {"chars"});
    return Value::string(strip_text(to_text(v), a.get(0), true, true));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    ArgReader a(args, what, {});
    const Text t = to_text(v);
    std::string out = name == "upper"   ? upper(t.bytes, "upper")
                      : name == "lower" ? lower(t.bytes, "lower")
                      : name == "title" ? jinja_title(t.bytes)
                                        : python_capitalize(t.bytes);
    return Value::string(derived(std::move(out), t.has_content()));
  }
  if (name == "replace") {
    ArgReader a(args, what, {"old", "new", "count"});
    if (!a.get(0) || !a.get(1)) throw ValueError(what + " needs two arguments");
    const int64_t count = a.get(2) && !a.get(2)->is_none() ? to_int_arg(*a.get(2), "count") : -1;
    return Value::string(replace_text(to_text(v), to_text(*a.get(0)).bytes, to_text(*a.get(1)), count, budget));
  }
  if (name == "indent") {
    ArgReader a(args, what, {"width", "first", "blank"});
    return Value::string(indent_text(to_text(v), a.get(0), a.get(1), a.get(2), budget));
  }
  if (name == "escape" || name == "e") {
    ArgReader a(args, what, {});
    return Value::string(escape_html(to_text(v)));
  }
  if (name == "tojson") return json_filter(v, args, budget);
  if (name == "abs") {
    ArgReader a(args, what, {});
    if (v.is_float()) return Value::floating(std::fabs(v.as_float()));
    const int64_t i = to_int_arg(v, "abs() argument");
    if (i == INT64_MIN) throw ValueError("integer overflow");
    return Value::integer(i < 0 ? -i : i);
  }
  if (name == "int") {
    ArgReader a(args, what, {"default", "base"});
    const Value fallback = a.get(0) ? *a.get(0) : Value::integer(0);
    if (a.get(1) && to_int_arg(*a.get(1), "base") != 10) throw ValueError("int filter: only base 10 is supported");
    if (v.is_int()) return v;
    if (v.is_bool()) return Value::integer(v.as_bool());
    if (v.is_float()) {
      const double d = v.as_float();
      if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
      return Value::integer(static_cast<int64_t>(d));
    }
    if (v.is_string()) {
      if (auto i = parse_python_int(v.str())) return Value::integer(*i);
      if (auto d = parse_python_float(v.str()); d && std::isfinite(*d) && std::fabs(*d) < 9.2e18)
        return Value::integer(static_cast<int64_t>(*d));
    }
    return fallback;
  }
  if (name == "float") {
    ArgReader a(args, what, {"default"});
    const Value fallback = a.get(0) ? *a.get(0) : Value::floating(0.0);
    if (v.is_float()) return v;
    if (v.is_int()) return Value::floating(static_cast<double>(v.as_int()));
    if (v.is_bool()) return Value::floating(v.as_bool() ? 1.0 : 0.0);
    if (v.is_string()) {
      if (auto d = parse_python_float(v.str())) return Value::floating(*d);
    }
    return fallback;
  }
  if (name == "first" || name == "last") {
    ArgReader a(args, what, {});
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined(fmt::format("no {} item, sequence was empty", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    ArgReader a(args, what, {});
    std::vector<Value> items = iterate(v);
    budget.sequence(items.size());
    return Value::sequence(std::move(items));
  }
  if (name == "items") {
    ArgReader a(args, what, {});
    if (v.is_undefined()) return Value::sequence({}, SequenceKind::Generator);
    if (!v.is_dict()) throw ValueError(fmt::format("can only get item pairs from a mapping, not {}", v.type_name()));
    std::vector<Value> items;
    for (const auto& [k, x] : v.dict().entries) items.push_back(Value::sequence({k, x}, SequenceKind::Tuple));
    budget.sequence(items.size());
    return Value::sequence(std::move(items), SequenceKind::Generator);
  }
  if (name == "reverse") {
    ArgReader a(args, what, {});
    if (v.is_string()) {
      const std::vector<size_t> offsets = code_point_offsets(v.str());
      Text out;
      for (size_t i = offsets.size() - 1; i > 0; --i)
        out.append(v.text().substr(offsets[i - 1], offsets[i] - offsets[i - 1]));
      return Value::string(std::move(out));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    budget.sequence(items.size());
    return Value::sequence(std::move(items), SequenceKind::Generator);
  }
  if (name == "join") {
    ArgReader a(args, what, {"d", "attribute"});
    const Text separator = a.get(0) ? to_text(*a.get(0)) : Text();
    const Value* attribute = a.get(1);
    Text out;
    bool first = true;
    for (const Value& item : iterate(v)) {
      if (!first) out.append(separator);
      first = false;
      out.append(to_text(attribute && !attribute->is_none() ? attribute_path(item, to_text(*attribute).bytes) : item));
      budget.string(out.bytes.size());
    }
    return Value::string(std::move(out));
  }
  if (name == "map") {
    std::vector<Value> out;
    const std::vector<Value> items = iterate(v);
    bool by_attribute = false;
    std::string attribute;
    Value fallback;
    for (const auto& [k, x] : args.keyword) {
      if (k == "attribute")
        by_attribute = true, attribute = to_text(x).bytes;
      else if (k == "default")
        fallback = x;
      else if (!args.positional.empty())
        throw ValueError(fmt::format("{} got an unexpected keyword argument '{}'", what, k));
    }
    if (by_attribute) {
      if (!args.positional.empty()) throw ValueError("map: give either a filter name or attribute=");
      for (const Value& item : items) {
        Value x = attribute_path(item, attribute);
        out.push_back(x.is_undefined() && !fallback.is_undefined() ? fallback : x);
      }
    } else {
      if (args.positional.empty()) throw ValueError("map needs a filter name or attribute=");
      const std::string filter = string_arg(args.positional[0], "filter name").str();
      if (!is_supported_filter(filter)) throw ValueError(fmt::format("unsupported filter '{}'", filter));
      Args filter_args;
      filter_args.positional.assign(args.positional.begin() + 1, args.positional.end());
      filter_args.keyword = args.keyword;
      for (const Value& item : items) {
        budget.charge(1);
        out.push_back(apply_filter(filter, item, filter_args, budget));
      }
    }
    budget.sequence(out.size());
    return Value::sequence(std::move(out), SequenceKind::Generator);
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool by_attribute = name.ends_with("attr");
    const bool keep = name.starts_with("select");
    std::vector<Value> out = select_items(v, args, by_attribute, keep, budget, what);
    return Value::sequence(std::move(out), SequenceKind::Generator);
  }
  if (name == "sort" || name == "min" || name == "max") {
    const bool is_sort = name == "sort";
    ArgReader a(args, what,
                is_sort ? std::initializer_list<std::string_view>{"reverse", "case_sensitive", "attribute"}
                        : std::initializer_list<std::string_view>{"case_sensitive", "attribute"});
    const bool reverse = is_sort && a.get(0) && truthy(*a.get(0));
    const Value* cs = a.get(is_sort ? 1 : 0);
    const Value* attr = a.get(is_sort ? 2 : 1);
    const bool case_sensitive = cs && truthy(*cs);
    std::vector<Value> items = iterate(v);
    budget.sequence(items.size());
    std::vector<std::pair<Value, size_t>> keyed;
    for (size_t i = 0; i < items.size(); ++i) {
      const Value subject = attr && !attr->is_none() ? attribute_path(items[i], to_text(*attr).bytes) : items[i];
      keyed.emplace_back(sort_key(subject, case_sensitive), i);
    }
    if (!is_sort) {
      if (keyed.empty()) return Value::undefined("no aggregated item, sequence was empty");
      size_t best = 0;
      for (size_t i = 1; i < keyed.size(); ++i) {
        const bool better =
            name == "min" ? less_than(keyed[i].first, keyed[best].first) : less_than(keyed[best].first, keyed[i].first);
        if (better) best = i;
      }
      return items[keyed[best].second];
    }
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
      return reverse ? less_than(y.first, x.first) : less_than(x.first, y.first);
    });
    std::vector<Value> out;
    for (const auto& [k, i] : keyed) out.push_back(items[i]);
    return Value::sequence(std::move(out));
  }
  if (name == "sum") {
    ArgReader a(args, what, {"attribute", "start"});
    Value total = a.get(1) ? *a.get(1) : Value::integer(0);
    for (const Value& item : iterate(v)) {
      budget.charge(1);
      total =
          add_numbers(total, a.get(0) && !a.get(0)->is_none() ? attribute_path(item, to_text(*a.get(0)).bytes) : item);
    }
    return total;
  }
  // attr
  ArgReader a(args, what, {"name"});
  if (!a.get(0)) throw ValueError("attr needs a name");
  const std::string attribute = to_text(*a.get(0)).bytes;
  if (v.is_dict() && !listed(kDictMethods, attribute))  // getattr on a dict never reaches its keys
    return Value::undefined(fmt::format("'dict object' has no attribute '{}'", attribute));
  return get_attribute(v, attribute);
}

}  // namespace tessera::chat::jinja
