// Jinja's filters, tests, global functions and the Python methods of str, dict and list that templates call,
// with the semantics Jinja and Python give them. Failures throw ValueError; the interpreter adds the line.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja_interpreter.h"
#include "chat/jinja_value.h"

namespace tessera::chat::jinja {

// The work a render may do, and the sizes it may build (jinja_interpreter.h has the numbers).
class Budget {
 public:
  void charge(uint64_t units);
  // Charges for building a string of `bytes` and refuses one over kMaxStringBytes.
  void string(size_t bytes);
  // Charges for building a sequence of `n` items and refuses one over kMaxSequenceLength.
  void sequence(size_t n);

 private:
  uint64_t used_ = 0;
};

struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Jinja's getattr (x.name) and getitem (x[key]) under the sandbox: a dict's methods win over its keys for
// x.name, keys win for x[key]; a missing name is undefined; looking into an undefined value is an error.
Value get_attribute(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);

// What a for loop, list() or join sees: the items of a list, the characters of a string, the keys of a dict;
// nothing for undefined. ValueError for what Python cannot iterate.
std::vector<Value> iterate(const Value& v);

// Python's `item in container`.
bool contains(const Value& container, const Value& item);

// A Python string method bound by get_attribute, called.
Value call_method(const Value& self, std::string_view name, const Args& args, Budget& budget);

bool is_global_function(std::string_view name);  // range, namespace, dict, raise_exception, strftime_now
// Throws chat::TemplateRaised for raise_exception.
Value call_global(std::string_view name, const Args& args, Budget& budget, const RenderContext& context);

Value apply_filter(std::string_view name, const Value& subject, const Args& args, Budget& budget);
bool apply_test(std::string_view name, const Value& subject, const Args& args);

}  // namespace tessera::chat::jinja
