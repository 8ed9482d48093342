#include "chat/jinja_value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "chat/jinja_unicode.h"

namespace tessera::chat::jinja {

Text Text::all_content(std::string bytes) {
  Text t(std::move(bytes));
  t.mark_all_content();
  return t;
}

void Text::add_range(size_t first, size_t last) {
  if (first >= last) return;
  if (!content.empty() && content.back().second >= first) {
    content.back().second = std::max(content.back().second, last);
  } else {
    content.emplace_back(first, last);
  }
}

void Text::append(const Text& other) {
  const size_t base = bytes.size();
  bytes.append(other.bytes);
  for (const ByteRange& r : other.content) add_range(base + r.first, base + r.second);
}

Text Text::substr(size_t pos, size_t n) const {
  pos = std::min(pos, bytes.size());
  n = std::min(n, bytes.size() - pos);
  Text out(bytes.substr(pos, n));
  for (const ByteRange& r : content) {
    const size_t first = std::max(r.first, pos), last = std::min(r.second, pos + n);
    if (first < last) out.add_range(first - pos, last - pos);
  }
  return out;
}

void Text::mark_all_content() {
  content.clear();
  if (!bytes.empty()) content.emplace_back(0, bytes.size());
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : entries)
    if (equals(k, key)) return &v;
  return nullptr;
}

Value* Dict::find(const Value& key) {
  for (auto& [k, v] : entries)
    if (equals(k, key)) return &v;
  return nullptr;
}

void Dict::set(Value key, Value value) {
  if (Value* existing = find(key)) {
    *existing = std::move(value);
  } else {
    entries.emplace_back(std::move(key), std::move(value));
  }
}

std::string Value::type_name() const {
  struct Visitor {
    std::string operator()(const Undefined&) const { return "undefined"; }
    std::string operator()(const None&) const { return "NoneType"; }
    std::string operator()(bool) const { return "bool"; }
    std::string operator()(int64_t) const { return "int"; }
    std::string operator()(double) const { return "float"; }
    std::string operator()(const std::shared_ptr<const Text>&) const { return "str"; }
    std::string operator()(const std::shared_ptr<const Sequence>& s) const {
      switch (s->kind) {
        case SequenceKind::List: return "list";
        case SequenceKind::Tuple: return "tuple";
        case SequenceKind::DictItems: return "dict_items";
        case SequenceKind::DictKeys: return "dict_keys";
        case SequenceKind::DictValues: return "dict_values";
        case SequenceKind::Generator: return "generator";
      }
      return "list";
    }
    std::string operator()(const std::shared_ptr<const Dict>&) const { return "dict"; }
    std::string operator()(const std::shared_ptr<Namespace>&) const { return "Namespace"; }
    std::string operator()(const std::shared_ptr<const Function>&) const { return "function"; }
  };
  return std::visit(Visitor{}, storage_);
}

bool truthy(const Value& v) {
  struct Visitor {
    bool operator()(const Undefined&) const { return false; }
    bool operator()(const None&) const { return false; }
    bool operator()(bool b) const { return b; }
    bool operator()(int64_t i) const { return i != 0; }
    bool operator()(double d) const { return d != 0.0; }
    bool operator()(const std::shared_ptr<const Text>& t) const { return !t->bytes.empty(); }
    bool operator()(const std::shared_ptr<const Sequence>& s) const {
      return s->kind == SequenceKind::Generator || !s->items.empty();  // a Python generator is always true
    }
    bool operator()(const std::shared_ptr<const Dict>& d) const { return !d->entries.empty(); }
    bool operator()(const std::shared_ptr<Namespace>&) const { return true; }
    bool operator()(const std::shared_ptr<const Function>&) const { return true; }
  };
  return std::visit(Visitor{}, v.storage());
}

namespace {

double number_as_double(const Value& v) {
  if (v.is_bool()) return v.as_bool() ? 1.0 : 0.0;
  if (v.is_int()) return static_cast<double>(v.as_int());
  return v.as_float();
}

bool is_integral(const Value& v) { return v.is_bool() || v.is_int(); }
int64_t integral(const Value& v) { return v.is_bool() ? (v.as_bool() ? 1 : 0) : v.as_int(); }

// list == list and tuple == tuple compare items; the views and generators compare by identity.
bool same_sequence_family(const Sequence& a, const Sequence& b) {
  return a.kind == b.kind && (a.kind == SequenceKind::List || a.kind == SequenceKind::Tuple);
}

}  // namespace

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (is_integral(a) && is_integral(b)) return integral(a) == integral(b);
    return number_as_double(a) == number_as_double(b);
  }
  if (a.is_string() && b.is_string()) return a.str() == b.str();
  if (a.is_undefined() && b.is_undefined()) return true;
  if (a.is_none() && b.is_none()) return true;
  if (a.is_sequence() && b.is_sequence()) {
    if (&a.seq() == &b.seq()) return true;
    if (!same_sequence_family(a.seq(), b.seq()) || a.items().size() != b.items().size()) return false;
    for (size_t i = 0; i < a.items().size(); ++i)
      if (!equals(a.items()[i], b.items()[i])) return false;
    return true;
  }
  if (a.is_dict() && b.is_dict()) {
    if (a.dict().entries.size() != b.dict().entries.size()) return false;
    for (const auto& [k, v] : a.dict().entries) {
      const Value* other = b.dict().find(k);
      if (!other || !equals(v, *other)) return false;
    }
    return true;
  }
  if (a.is_namespace() && b.is_namespace()) return &a.ns() == &b.ns();
  if (a.is_function() && b.is_function()) return &a.fn() == &b.fn();
  return false;
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (is_integral(a) && is_integral(b)) return integral(a) < integral(b);
    return number_as_double(a) < number_as_double(b);
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 byte order is code point order
  if (a.is_sequence() && b.is_sequence() && same_sequence_family(a.seq(), b.seq())) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less_than(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  throw ValueError(fmt::format("'<' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name()));
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // e.g. "-1.2345e-05"
  std::string sign;
  if (sci[0] == '-') sign = "-", sci.erase(0, 1);
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(sci.substr(e + 1));
  const int decpt = exponent + 1;  // where the decimal point goes, counted from the first digit
  const int n = static_cast<int>(digits.size());
  std::string out = sign;
  if (decpt <= -4 || decpt > 16) {
    out += digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  } else if (decpt <= 0) {
    out += "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= n) {
    out += digits + std::string(decpt - n, '0') + ".0";
  } else {
    out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return out;
}

namespace {

// Python's str.isprintable() for non-ASCII code points, for the ranges a chat template can plausibly meet:
// separators, format characters, C1 controls, surrogates and private use are not printable; unassigned code
// points are treated as printable.
bool is_printable_non_ascii(uint32_t cp) {
  if (cp <= 0xA0 || cp == 0xAD) return false;
  if (cp >= 0x600 && cp <= 0x605) return false;
  if (cp == 0x61C || cp == 0x6DD || cp == 0x70F || cp == 0x1680 || cp == 0x180E) return false;
  if (cp >= 0x2000 && cp <= 0x200F) return false;
  if (cp >= 0x2028 && cp <= 0x202F) return false;
  if (cp >= 0x205F && cp <= 0x206F) return false;
  if (cp == 0x3000 || cp == 0xFEFF || (cp >= 0xFFF9 && cp <= 0xFFFB) || cp == 0xFFFE || cp == 0xFFFF) return false;
  if (cp >= 0xD800 && cp <= 0xF8FF) return false;  // surrogates and private use
  if (cp >= 0xF0000) return false;                 // private use planes
  if (cp == 0xE0001 || (cp >= 0xE0020 && cp <= 0xE007F)) return false;
  return true;
}

std::string string_repr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    const uint32_t cp = decode_utf8(s, pos, &len);
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F) {
      out += fmt::format("\\x{:02x}", cp);
    } else if (cp < 0x80 || is_printable_non_ascii(cp)) {
      out.append(s.substr(pos, len));
    } else if (cp < 0x100) {
      out += fmt::format("\\x{:02x}", cp);
    } else if (cp < 0x10000) {
      out += fmt::format("\\u{:04x}", cp);
    } else {
      out += fmt::format("\\U{:08x}", cp);
    }
  }
  out.push_back(quote);
  return out;
}

}  // namespace

bool has_content(const Value& v) {
  if (v.is_string()) return v.text().has_content();
  if (v.is_sequence())
    return std::any_of(v.items().begin(), v.items().end(), [](const Value& x) { return has_content(x); });
  if (v.is_dict()) {
    for (const auto& [k, x] : v.dict().entries)
      if (has_content(k) || has_content(x)) return true;
  }
  if (v.is_namespace()) {
    for (const auto& [k, x] : v.ns().attributes.entries)
      if (has_content(x)) return true;
  }
  return false;
}

namespace {

std::string join_reprs(const std::vector<Value>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += repr(items[i]);
  }
  return out;
}

std::string dict_repr(const Dict& d) {
  std::string out = "{";
  for (size_t i = 0; i < d.entries.size(); ++i) {
    if (i) out += ", ";
    out += repr(d.entries[i].first) + ": " + repr(d.entries[i].second);
  }
  return out + "}";
}

}  // namespace

std::string repr(const Value& v) {
  struct Visitor {
    std::string operator()(const Undefined&) const { return "Undefined"; }
    std::string operator()(const None&) const { return "None"; }
    std::string operator()(bool b) const { return b ? "True" : "False"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return float_repr(d); }
    std::string operator()(const std::shared_ptr<const Text>& t) const { return string_repr(t->bytes); }
    std::string operator()(const std::shared_ptr<const Sequence>& s) const {
      switch (s->kind) {
        case SequenceKind::List: return "[" + join_reprs(s->items) + "]";
        case SequenceKind::Tuple: return "(" + join_reprs(s->items) + (s->items.size() == 1 ? ",)" : ")");
        case SequenceKind::DictItems: return "dict_items([" + join_reprs(s->items) + "])";
        case SequenceKind::DictKeys: return "dict_keys([" + join_reprs(s->items) + "])";
        case SequenceKind::DictValues: return "dict_values([" + join_reprs(s->items) + "])";
        case SequenceKind::Generator: break;
      }
      throw ValueError("cannot print a generator (Python prints its address); apply |list first");
    }
    std::string operator()(const std::shared_ptr<const Dict>& d) const { return dict_repr(*d); }
    std::string operator()(const std::shared_ptr<Namespace>& n) const {
      return "<Namespace " + dict_repr(n->attributes) + ">";
    }
    std::string operator()(const std::shared_ptr<const Function>& f) const {
      throw ValueError(fmt::format("cannot print the function '{}'", f->name));
    }
  };
  return std::visit(Visitor{}, v.storage());
}

Text to_text(const Value& v) {
  if (v.is_undefined()) return Text();
  if (v.is_string()) return v.text();
  Text out(repr(v));
  if (has_content(v)) out.mark_all_content();
  return out;
}

namespace {

void json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out.push_back(ch);
    }
  }
  out.push_back('"');
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return float_repr(d);
}

// json.dumps turns dict keys into strings this way; other key types are an error.
std::string json_key(const Value& k) {
  if (k.is_string()) return k.str();
  if (k.is_bool()) return k.as_bool() ? "true" : "false";
  if (k.is_int()) return std::to_string(k.as_int());
  if (k.is_float()) return json_float(k.as_float());
  if (k.is_none()) return "null";
  throw ValueError(fmt::format("keys must be str, int, float, bool or None, not {}", k.type_name()));
}

class JsonWriter {
 public:
  explicit JsonWriter(const JsonOptions& o) : o_(o) {
    item_separator_ = !o.item_separator.empty() ? o.item_separator : (indented() ? "," : ", ");
  }

  void write(const Value& v, int depth) {
    if (depth > 200) throw ValueError("tojson: value nested too deeply");
    if (v.is_none()) {
      out += "null";
    } else if (v.is_bool()) {
      out += v.as_bool() ? "true" : "false";
    } else if (v.is_int()) {
      out += std::to_string(v.as_int());
    } else if (v.is_float()) {
      out += json_float(v.as_float());
    } else if (v.is_string()) {
      json_string(out, v.str());
    } else if (v.is_sequence()) {
      const auto& items = v.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += "[";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_separator_;
        newline(depth + 1);
        write(items[i], depth + 1);
      }
      newline(depth);
      out += "]";
    } else if (v.is_dict()) {
      std::vector<const std::pair<Value, Value>*> entries;
      for (const auto& e : v.dict().entries) entries.push_back(&e);
      if (o_.sort_keys)
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return less_than(a->first, b->first); });
      if (entries.empty()) {
        out += "{}";
        return;
      }
      out += "{";
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_separator_;
        newline(depth + 1);
        json_string(out, json_key(entries[i]->first));
        out += o_.key_separator;
        write(entries[i]->second, depth + 1);
      }
      newline(depth);
      out += "}";
    } else {
      throw ValueError(fmt::format("Object of type {} is not JSON serializable", v.type_name()));
    }
  }

  std::string out;

 private:
  bool indented() const { return o_.indent >= 0 || !o_.indent_text.empty(); }
  void newline(int depth) {
    if (!indented()) return;
    out.push_back('\n');
    for (int i = 0; i < depth; ++i) {
      if (!o_.indent_text.empty())
        out += o_.indent_text;
      else
        out.append(static_cast<size_t>(o_.indent), ' ');
    }
  }

  const JsonOptions& o_;
  std::string item_separator_;
};

}  // namespace

std::string to_json(const Value& v, const JsonOptions& options) {
  JsonWriter w(options);
  w.write(v, 0);
  return std::move(w.out);
}

}  // namespace tessera::chat::jinja
