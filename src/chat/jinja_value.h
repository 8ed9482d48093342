// The values a chat template computes with, and the Python behaviours Jinja gives them: truthiness, equality,
// ordering, str() and repr() text, and transformers' tojson. Strings carry which of their bytes came from caller
// data ("content"), so the rendered prompt can say which bytes must never become special tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace tessera::chat::jinja {

// Thrown by the value operations for an operation the types do not support; the interpreter adds the line.
class ValueError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A byte range [first, second).
using ByteRange = std::pair<size_t, size_t>;

// A string with the byte ranges that came from caller data. Ranges are sorted, disjoint and never touch, so two
// texts with the same bytes and content compare equal.
struct Text {
  std::string bytes;
  std::vector<ByteRange> content;

  Text() = default;
  explicit Text(std::string plain) : bytes(std::move(plain)) {}
  static Text all_content(std::string bytes);

  void append(std::string_view plain) { bytes.append(plain); }
  void append(const Text& other);
  // The bytes [pos, pos + n) with their content ranges.
  Text substr(size_t pos, size_t n) const;
  bool has_content() const { return !content.empty(); }
  // Marks every byte as content: for transformations that do not keep track of where each byte came from.
  void mark_all_content();
  bool operator==(const Text&) const = default;

 private:
  void add_range(size_t first, size_t last);
};

class Value;
struct Function;

// A list, a tuple or one of the read-only sequences that Python methods and filters return; they iterate and
// index alike and differ only in how they print and compare.
enum class SequenceKind : uint8_t {
  List,
  Tuple,
  DictItems,   // dict.items(), printed as dict_items([...])
  DictKeys,    // dict.keys()
  DictValues,  // dict.values()
  Generator,   // what map/select/selectattr/reverse/items give: Python cannot print these meaningfully
};

struct Sequence {
  SequenceKind kind = SequenceKind::List;
  std::vector<Value> items;
};

// A dict keeps insertion order, as Python's does.
struct Dict {
  std::vector<std::pair<Value, Value>> entries;
  const Value* find(const Value& key) const;
  Value* find(const Value& key);
  void set(Value key, Value value);
};

struct Undefined {
  std::string name;  // what was looked up, for error messages
};
struct None {};
// A namespace() object: the one mutable value, changed by {% set ns.attr = ... %}.
struct Namespace {
  Dict attributes;
};

class Value {
 public:
  using Storage =
      std::variant<Undefined, None, bool, int64_t, double, std::shared_ptr<const Text>, std::shared_ptr<const Sequence>,
                   std::shared_ptr<const Dict>, std::shared_ptr<Namespace>, std::shared_ptr<const Function>>;

  Value() : storage_(Undefined{}) {}
  static Value undefined(std::string name) { return Value(Storage(Undefined{std::move(name)})); }
  static Value none() { return Value(Storage(None{})); }
  static Value boolean(bool b) { return Value(Storage(b)); }
  static Value integer(int64_t i) { return Value(Storage(i)); }
  static Value floating(double d) { return Value(Storage(d)); }
  static Value string(Text text) { return Value(Storage(std::make_shared<const Text>(std::move(text)))); }
  static Value string(std::string plain) { return string(Text(std::move(plain))); }
  static Value sequence(std::vector<Value> items, SequenceKind kind = SequenceKind::List) {
    return Value(Storage(std::make_shared<const Sequence>(Sequence{kind, std::move(items)})));
  }
  static Value dict(Dict d) { return Value(Storage(std::make_shared<const Dict>(std::move(d)))); }
  static Value namespace_object(Dict attributes) {
    return Value(Storage(std::make_shared<Namespace>(Namespace{std::move(attributes)})));
  }
  static Value function(std::shared_ptr<const Function> f) { return Value(Storage(std::move(f))); }

  bool is_undefined() const { return std::holds_alternative<Undefined>(storage_); }
  bool is_none() const { return std::holds_alternative<None>(storage_); }
  bool is_bool() const { return std::holds_alternative<bool>(storage_); }
  bool is_int() const { return std::holds_alternative<int64_t>(storage_); }
  bool is_float() const { return std::holds_alternative<double>(storage_); }
  bool is_number() const { return is_bool() || is_int() || is_float(); }  // Python: bool is an int
  bool is_string() const { return std::holds_alternative<std::shared_ptr<const Text>>(storage_); }
  bool is_sequence() const { return std::holds_alternative<std::shared_ptr<const Sequence>>(storage_); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<const Dict>>(storage_); }
  bool is_namespace() const { return std::holds_alternative<std::shared_ptr<Namespace>>(storage_); }
  bool is_function() const { return std::holds_alternative<std::shared_ptr<const Function>>(storage_); }

  const std::string& undefined_name() const { return std::get<Undefined>(storage_).name; }
  bool as_bool() const { return std::get<bool>(storage_); }
  int64_t as_int() const { return std::get<int64_t>(storage_); }  // exactly an int (not a bool)
  double as_float() const { return std::get<double>(storage_); }
  const Text& text() const { return *std::get<std::shared_ptr<const Text>>(storage_); }
  const std::string& str() const { return text().bytes; }
  const Sequence& seq() const { return *std::get<std::shared_ptr<const Sequence>>(storage_); }
  const std::vector<Value>& items() const { return seq().items; }
  const Dict& dict() const { return *std::get<std::shared_ptr<const Dict>>(storage_); }
  Namespace& ns() const { return *std::get<std::shared_ptr<Namespace>>(storage_); }
  const Function& fn() const { return *std::get<std::shared_ptr<const Function>>(storage_); }
  const Storage& storage() const { return storage_; }

  // Python's name of the type, for error messages: "str", "int", "list", "dict", "NoneType", "undefined", ...
  std::string type_name() const;

 private:
  explicit Value(Storage s) : storage_(std::move(s)) {}
  Storage storage_;
};

// A callable: a {% macro %}, a global such as range(), or a method bound to the value it was looked up on.
struct MacroDef;  // jinja_ast.h
struct Function {
  enum class Kind : uint8_t { Macro, Builtin, Method };
  Kind kind = Kind::Builtin;
  std::string name;
  Value self;                       // Method: the string, dict or list it belongs to
  const MacroDef* macro = nullptr;  // Macro: its definition, owned by the parsed template
};

// Python truthiness; undefined is false.
bool truthy(const Value& v);
// Python ==, with Jinja's undefined == undefined.
bool equals(const Value& a, const Value& b);
// Python <; throws ValueError for types Python cannot order.
bool less_than(const Value& a, const Value& b);

// Whether any string in v (or in its items, keys and attributes) holds content.
bool has_content(const Value& v);

// What {{ v }} prints: Python's str(v), with undefined as "". Content stays content (exact for strings,
// whole-text for containers that hold content).
Text to_text(const Value& v);
// Python's repr(v).
std::string repr(const Value& v);
// Python's repr of a float (shortest text that reads back as the same double).
std::string float_repr(double d);

struct JsonOptions {
  int indent = -1;             // -1: one line
  std::string indent_text;     // used when not empty instead of `indent` spaces
  std::string item_separator;  // "" means Python's default: ", " one line, "," indented
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// transformers' tojson: json.dumps without ASCII or HTML escaping. Throws ValueError for undefined, namespaces
// and functions, as json.dumps does for objects it cannot serialize.
std::string to_json(const Value& v, const JsonOptions& options);

}  // namespace tessera::chat::jinja
