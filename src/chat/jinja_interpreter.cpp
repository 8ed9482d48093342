#include "chat/jinja_interpreter.h"

#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "chat/jinja_builtins.h"
#include "chat/jinja_unicode.h"
#include "chat/template_error.h"

namespace tessera::chat::jinja {

namespace {

// Python's operators on the values a template computes with.
Value arithmetic(const std::string& op, const Value& a, const Value& b, Budget& budget) {
  const auto fail = [&]() -> Value {
    throw ValueError(
        fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
  };
  if (a.is_number() && b.is_number()) {
    const bool floating = a.is_float() || b.is_float() || op == "/";
    if (floating) {
      auto d = [](const Value& x) {
        return x.is_float() ? x.as_float() : static_cast<double>(x.is_int() ? x.as_int() : x.as_bool());
      };
      const double x = d(a), y = d(b);
      if (op == "+") return Value::floating(x + y);
      if (op == "-") return Value::floating(x - y);
      if (op == "*") return Value::floating(x * y);
      if (op == "**") {
        if (x == 0.0 && y < 0) throw ValueError("0.0 cannot be raised to a negative power");
        const double r = std::pow(x, y);
        if (std::isnan(r) && !std::isnan(x) && !std::isnan(y)) throw ValueError("a complex result is not supported");
        return Value::floating(r);
      }
      if (y == 0.0) throw ValueError("float division by zero");
      if (op == "/") return Value::floating(x / y);
      const double mod = std::fmod(x, y);
      if (op == "%") return Value::floating(mod != 0.0 && ((mod < 0) != (y < 0)) ? mod + y : mod);
      return Value::floating(std::floor(x / y));  // "//"
    }
    const int64_t x = a.is_int() ? a.as_int() : a.as_bool(), y = b.is_int() ? b.as_int() : b.as_bool();
    int64_t r = 0;
    bool overflow = false;
    if (op == "+")
      overflow = __builtin_add_overflow(x, y, &r);
    else if (op == "-")
      overflow = __builtin_sub_overflow(x, y, &r);
    else if (op == "*")
      overflow = __builtin_mul_overflow(x, y, &r);
    else if (op == "**") {
      if (y < 0) return Value::floating(std::pow(static_cast<double>(x), static_cast<double>(y)));
      r = 1;
      int64_t base = x;
      for (int64_t e = y; e > 0 && !overflow; e >>= 1) {
        if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
        if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
      }
    } else {  // "//" and "%": Python rounds toward negative infinity
      if (y == 0) throw ValueError("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) throw ValueError("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) --q, m += y;
      r = op == "//" ? q : m;
    }
    if (overflow) throw ValueError("integer overflow (Python's integers are unbounded, ours are 64-bit)");
    return Value::integer(r);
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      budget.string(a.str().size() + b.str().size());
      Text t;
      t.bytes.reserve(a.str().size() + b.str().size());
      t.append(a.text());
      t.append(b.text());
      return Value::string(std::move(t));
    }
    if (a.is_sequence() && b.is_sequence() && a.seq().kind == b.seq().kind &&
        (a.seq().kind == SequenceKind::List || a.seq().kind == SequenceKind::Tuple)) {
      budget.sequence(a.items().size() + b.items().size());
      std::vector<Value> items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return Value::sequence(std::move(items), a.seq().kind);
    }
    if (a.is_undefined()) throw ValueError(a.undefined_name());
    if (b.is_undefined()) throw ValueError(b.undefined_name());
    return fail();
  }
  if (op == "*") {
    const Value& seq = a.is_number() ? b : a;
    const Value& count = a.is_number() ? a : b;
    if (!(count.is_int() || count.is_bool()) || !(seq.is_string() || seq.is_sequence())) return fail();
    const int64_t n = std::max<int64_t>(count.is_int() ? count.as_int() : count.as_bool(), 0);
    if (seq.is_string()) {
      const size_t unit = seq.str().size();
      if (unit && static_cast<uint64_t>(n) > kMaxStringBytes / unit) budget.string(kMaxStringBytes + 1);
      budget.string(unit * static_cast<size_t>(n));
      Text t;
      for (int64_t i = 0; i < n; ++i) t.append(seq.text());
      return Value::string(std::move(t));
    }
    const size_t unit = seq.items().size();
    if (unit && static_cast<uint64_t>(n) > kMaxSequenceLength / unit) budget.sequence(kMaxSequenceLength + 1);
    budget.sequence(unit * static_cast<size_t>(n));
    std::vector<Value> items;
    for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.items().begin(), seq.items().end());
    return Value::sequence(std::move(items),
                           seq.seq().kind == SequenceKind::Tuple ? SequenceKind::Tuple : SequenceKind::List);
  }
  if (a.is_undefined()) throw ValueError(a.undefined_name());
  if (b.is_undefined()) throw ValueError(b.undefined_name());
  if (a.is_string() && op == "%") throw ValueError("unsupported %-formatting of a string");
  return fail();
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "<") return less_than(a, b);
  if (op == ">") return less_than(b, a);
  if (op == "<=") return less_than(a, b) || equals(a, b);
  if (op == ">=") return less_than(b, a) || equals(a, b);
  if (op == "in") return contains(b, a);
  return !contains(b, a);  // "not in"
}

// Python's slice indices for a sequence of n items.
std::vector<int64_t> slice_indices(int64_t n, const Value* start_v, const Value* stop_v, const Value* step_v) {
  auto as_index = [](const Value* v, const char* what) -> std::optional<int64_t> {
    if (!v || v->is_none()) return std::nullopt;
    if (v->is_int()) return v->as_int();
    if (v->is_bool()) return static_cast<int64_t>(v->as_bool());
    throw ValueError(fmt::format("slice {} must be an integer or None, not {}", what, v->type_name()));
  };
  const int64_t step = as_index(step_v, "step").value_or(1);
  if (step == 0) throw ValueError("slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> i, int64_t dflt) {
    if (!i) return dflt;
    int64_t x = *i;
    if (x < 0)
      x = x < -n ? (step < 0 ? -1 : 0) : x + n;
    else if (x >= n)
      x = step < 0 ? n - 1 : n;
    return x;
  };
  const int64_t start = clamp(as_index(start_v, "start"), step < 0 ? n - 1 : 0);
  const int64_t stop = clamp(as_index(stop_v, "stop"), step < 0 ? -1 : n);
  std::vector<int64_t> out;
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) out.push_back(i);
  } else {
    for (int64_t i = start; i > stop; i += step) out.push_back(i);
  }
  return out;
}

class Interpreter {
 public:
  explicit Interpreter(const RenderContext& context) : context_(context) {
    scopes_.emplace_back();
    for (const auto& [name, value] : context.variables) scopes_[0].set(name, value);
  }

  Text run(const Body& body) {
    Text out;
    out_ = &out;
    exec_body(body);
    return out;
  }

 private:
  enum class Flow { Normal, Break, Continue };

  struct Scope {
    std::vector<std::pair<std::string, Value>> vars;
    const Value* find(std::string_view name) const {
      for (auto it = vars.rbegin(); it != vars.rend(); ++it)
        if (it->first == name) return &it->second;
      return nullptr;
    }
    void set(const std::string& name, Value v) {
      for (auto& [k, x] : vars) {
        if (k == name) {
          x = std::move(v);
          return;
        }
      }
      vars.emplace_back(name, std::move(v));
    }
  };

  // Keeps the C++ stack bounded whatever the template nests or recurses.
  class Recursion {
   public:
    Recursion(Interpreter& in, int line) : in_(in) {
      if (++in_.depth_ > kMaxRecursion)
        throw TemplateError(line, fmt::format("the template nests or recurses deeper than {} levels", kMaxRecursion));
    }
    ~Recursion() { --in_.depth_; }
    Recursion(const Recursion&) = delete;
    Recursion& operator=(const Recursion&) = delete;

   private:
    Interpreter& in_;
  };

  // ---- variables ----
  Value lookup(const std::string& name) const {
    for (size_t i = scopes_.size(); i-- > barrier_;)
      if (const Value* v = scopes_[i].find(name)) return *v;
    if (barrier_ > 0)
      if (const Value* v = scopes_[0].find(name)) return *v;  // a macro sees the template's top level
    if (is_global_function(name)) {
      auto f = std::make_shared<Function>();
      f->kind = Function::Kind::Builtin;
      f->name = name;
      return Value::function(std::move(f));
    }
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }

  void assign(const std::string& name, Value v) { scopes_.back().set(name, std::move(v)); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    std::vector<Value> parts;
    try {
      parts = iterate(v);
    } catch (const ValueError&) {
      throw TemplateError(line, fmt::format("cannot unpack a non-iterable {} object", v.type_name()));
    }
    if (parts.size() != targets.size())
      throw TemplateError(line, fmt::format("cannot unpack {} values into {} names", parts.size(), targets.size()));
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], parts[i]);
  }

  // ---- output ----
  void emit(const Text& t, int line) {
    if (out_->bytes.size() + t.bytes.size() > kMaxStringBytes)
      throw TemplateError(line, fmt::format("the output grew over the limit of {} bytes", kMaxStringBytes));
    out_->append(t);
  }

  void charge(uint64_t units, int line) {
    try {
      budget_.charge(units);
    } catch (const ValueError& e) {
      throw TemplateError(line, e.what());
    }
  }

  // Renders `body` into its own text (macro calls, {% set %} and {% filter %} blocks).
  Text capture(const Body& body) {
    Text captured;
    Text* saved = out_;
    out_ = &captured;
    try {
      exec_body(body);
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return captured;
  }

  // ---- statements ----
  Flow exec_body(const Body& body) {
    for (const StmtPtr& s : body) {
      const Flow f = exec(*s);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s) {
    Recursion guard(*this, s.line);
    charge(1, s.line);
    switch (s.kind) {
      case Stmt::Kind::Text: emit(Text(s.text), s.line); return Flow::Normal;
      case Stmt::Kind::Output: {
        const Value v = eval(*s.expr);
        try {
          emit(to_text(v), s.line);
        } catch (const ValueError& e) {
          throw TemplateError(s.line, e.what());
        }
        return Flow::Normal;
      }
      case Stmt::Kind::If:
        for (const auto& [condition, body] : s.branches) {
          if (!condition || truthy(eval(*condition))) return exec_body(body);
        }
        return Flow::Normal;
      case Stmt::Kind::For: return exec_for(s);
      case Stmt::Kind::Set: {
        const Value v = eval(*s.expr);
        if (!s.attr.empty()) {
          const Value target = lookup(s.targets[0]);
          if (!target.is_namespace())
            throw TemplateError(
                s.line, fmt::format("cannot assign attribute '{}' of '{}': not a namespace", s.attr, s.targets[0]));
          target.ns().attributes.set(Value::string(s.attr), v);
        } else {
          assign_targets(s.targets, v, s.line);
        }
        return Flow::Normal;
      }
      case Stmt::Kind::SetBlock: {
        Value v = Value::string(capture(s.body));
        if (s.filter) v = eval_captured(*s.filter, std::move(v));
        assign(s.targets[0], std::move(v));
        return Flow::Normal;
      }
      case Stmt::Kind::FilterBlock: {
        Value v = Value::string(capture(s.body));
        if (s.filter) v = eval_captured(*s.filter, std::move(v));
        try {
          emit(to_text(v), s.line);
        } catch (const ValueError& e) {
          throw TemplateError(s.line, e.what());
        }
        return Flow::Normal;
      }
      case Stmt::Kind::Macro: {
        auto f = std::make_shared<Function>();
        f->kind = Function::Kind::Macro;
        f->name = s.macro->name;
        f->macro = s.macro.get();
        assign(s.macro->name, Value::function(std::move(f)));
        return Flow::Normal;
      }
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  Value eval_captured(const Expr& filter, Value captured) {
    Value saved = std::move(captured_);
    captured_ = std::move(captured);
    Value v = eval(filter);
    captured_ = std::move(saved);
    return v;
  }

  Flow exec_for(const Stmt& s) {
    const Value iterable = eval(*s.expr);
    std::vector<Value> items;
    try {
      items = iterate(iterable);
    } catch (const ValueError& e) {
      throw TemplateError(s.line, e.what());
    }
    charge(items.size(), s.line);
    if (s.filter) {  // `for x in xs if cond`: the loop sees only the items that pass
      std::vector<Value> kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        bool pass = false;
        try {
          assign_targets(s.targets, item, s.line);
          pass = truthy(eval(*s.filter));
        } catch (...) {
          scopes_.pop_back();
          throw;
        }
        scopes_.pop_back();
        if (pass) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      charge(1, s.line);
      Value loop;
      if (s.uses_loop) loop = loop_object(items, i);
      scopes_.emplace_back();
      Flow f = Flow::Normal;
      try {
        assign_targets(s.targets, items[static_cast<size_t>(i)], s.line);
        if (s.uses_loop) assign("loop", std::move(loop));
        f = exec_body(s.body);
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    if (n == 0 && !s.else_body.empty()) return exec_body(s.else_body);
    return Flow::Normal;
  }

  // The `loop` variable of iteration i: index, index0, revindex, revindex0, first, last, length, previtem,
  // nextitem, depth, depth0.
  static Value loop_object(const std::vector<Value>& items, int64_t i) {
    static const std::vector<Value> keys = [] {
      std::vector<Value> k;
      for (const char* name : {"index0", "index", "revindex0", "revindex", "first", "last", "length", "depth0", "depth",
                               "previtem", "nextitem"})
        k.push_back(Value::string(name));
      return k;
    }();
    const auto n = static_cast<int64_t>(items.size());
    Dict loop;
    loop.entries.reserve(keys.size());
    loop.entries.emplace_back(keys[0], Value::integer(i));
    loop.entries.emplace_back(keys[1], Value::integer(i + 1));
    loop.entries.emplace_back(keys[2], Value::integer(n - i - 1));
    loop.entries.emplace_back(keys[3], Value::integer(n - i));
    loop.entries.emplace_back(keys[4], Value::boolean(i == 0));
    loop.entries.emplace_back(keys[5], Value::boolean(i == n - 1));
    loop.entries.emplace_back(keys[6], Value::integer(n));
    loop.entries.emplace_back(keys[7], Value::integer(0));
    loop.entries.emplace_back(keys[8], Value::integer(1));
    if (i > 0) loop.entries.emplace_back(keys[9], items[static_cast<size_t>(i) - 1]);
    if (i + 1 < n) loop.entries.emplace_back(keys[10], items[static_cast<size_t>(i) + 1]);
    return Value::dict(std::move(loop));
  }

  // ---- expressions ----
  Value eval(const Expr& e) {
    Recursion guard(*this, e.line);
    charge(1, e.line);
    try {
      return eval_node(e);
    } catch (const ValueError& err) {
      throw TemplateError(e.line, err.what());
    }
  }

  Args eval_args(const Expr& e, size_t first) {
    Args args;
    for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
    for (const auto& [name, x] : e.kwargs) args.keyword.emplace_back(name, eval(*x));
    return args;
  }

  Value eval_node(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::Captured: return captured_;
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        std::vector<Value> items;
        for (const ExprPtr& x : e.args) items.push_back(eval(*x));
        return Value::sequence(std::move(items), e.kind == Expr::Kind::List ? SequenceKind::List : SequenceKind::Tuple);
      }
      case Expr::Kind::DictLit: {
        Dict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i]);
          d.set(std::move(k), eval(*e.args[i + 1]));
        }
        return Value::dict(std::move(d));
      }
      case Expr::Kind::Attr: return get_attribute(eval(*e.args[0]), e.name);
      case Expr::Kind::Index: {
        const Value obj = eval(*e.args[0]);
        return get_item(obj, eval(*e.args[1]));
      }
      case Expr::Kind::Slice: return eval_slice(e);
      case Expr::Kind::Call: return eval_call(e);
      case Expr::Kind::Filter: {
        const Value subject = eval(*e.args[0]);
        const Args args = eval_args(e, 1);
        return apply_filter(e.name, subject, args, budget_);
      }
      case Expr::Kind::Test: {
        const Value subject = eval(*e.args[0]);
        const Args args = eval_args(e, 1);
        return Value::boolean(apply_test(e.name, subject, args) != e.negated);
      }
      case Expr::Kind::Neg:
      case Expr::Kind::Pos: {
        const Value v = eval(*e.args[0]);
        if (v.is_float()) return Value::floating(e.kind == Expr::Kind::Neg ? -v.as_float() : v.as_float());
        if (v.is_int() || v.is_bool()) {
          const int64_t i = v.is_int() ? v.as_int() : v.as_bool();
          if (e.kind == Expr::Kind::Pos) return Value::integer(i);
          if (i == INT64_MIN) throw ValueError("integer overflow");
          return Value::integer(-i);
        }
        if (v.is_undefined()) throw ValueError(v.undefined_name());
        throw ValueError(
            fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Kind::Neg ? '-' : '+', v.type_name()));
      }
      case Expr::Kind::Not: return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::Kind::And: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case Expr::Kind::Binary: {
        const Value a = eval(*e.args[0]);
        const Value b = eval(*e.args[1]);
        return arithmetic(e.name, a, b, budget_);
      }
      case Expr::Kind::Concat: {
        // Every piece first, so that the result is built with one allocation.
        std::vector<Value> values;
        std::vector<Text> printed(e.args.size());
        size_t total = 0;
        for (size_t i = 0; i < e.args.size(); ++i) {
          values.push_back(eval(*e.args[i]));
          if (!values[i].is_string()) printed[i] = to_text(values[i]);
          total += values[i].is_string() ? values[i].str().size() : printed[i].bytes.size();
        }
        budget_.string(total);
        Text t;
        t.bytes.reserve(total);
        for (size_t i = 0; i < values.size(); ++i) t.append(values[i].is_string() ? values[i].text() : printed[i]);
        return Value::string(std::move(t));
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          if (!compare(e.ops[i], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::Cond:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined("the condition was false and there is no else");
    }
    return Value();
  }

  Value eval_slice(const Expr& e) {
    const Value obj = eval(*e.args[0]);
    Value parts[3];
    for (int i = 0; i < 3; ++i)
      if (e.args[static_cast<size_t>(i) + 1]) parts[i] = eval(*e.args[static_cast<size_t>(i) + 1]);
    const auto part = [&](int i) { return e.args[static_cast<size_t>(i) + 1] ? &parts[i] : nullptr; };
    if (obj.is_undefined()) throw ValueError(obj.undefined_name());
    if (obj.is_string()) {
      const std::vector<size_t> offsets = code_point_offsets(obj.str());
      const auto n = static_cast<int64_t>(offsets.size() - 1);
      Text out;
      for (int64_t i : slice_indices(n, part(0), part(1), part(2))) {
        const auto k = static_cast<size_t>(i);
        out.append(obj.text().substr(offsets[k], offsets[k + 1] - offsets[k]));
      }
      budget_.string(out.bytes.size());
      return Value::string(std::move(out));
    }
    if (obj.is_sequence()) {
      const auto& items = obj.items();
      std::vector<Value> out;
      for (int64_t i : slice_indices(static_cast<int64_t>(items.size()), part(0), part(1), part(2)))
        out.push_back(items[static_cast<size_t>(i)]);
      budget_.sequence(out.size());
      return Value::sequence(std::move(out),
                             obj.seq().kind == SequenceKind::Tuple ? SequenceKind::Tuple : SequenceKind::List);
    }
    throw ValueError(fmt::format("'{}' object is not subscriptable with a slice", obj.type_name()));
  }

  Value eval_call(const Expr& e) {
    const Value callee = eval(*e.args[0]);
    Args args = eval_args(e, 1);
    if (callee.is_undefined()) {
      if (e.args[0]->kind == Expr::Kind::Name)
        throw ValueError(fmt::format("unsupported or undefined function '{}'", e.args[0]->name));
      throw ValueError(fmt::format("cannot call an undefined value ({})", callee.undefined_name()));
    }
    if (!callee.is_function()) throw ValueError(fmt::format("'{}' object is not callable", callee.type_name()));
    const Function& f = callee.fn();
    switch (f.kind) {
      case Function::Kind::Method: return call_method(f.self, f.name, args, budget_);
      case Function::Kind::Builtin: return call_global(f.name, args, budget_, context_);
      case Function::Kind::Macro: return call_macro(*f.macro, std::move(args), e.line);
    }
    return Value();
  }

  Value call_macro(const MacroDef& m, Args args, int line) {
    if (macro_depth_ >= kMaxMacroDepth)
      throw TemplateError(line, fmt::format("macros call each other deeper than {} levels", kMaxMacroDepth));
    if (args.positional.size() > m.params.size())
      throw ValueError(fmt::format("macro '{}' takes not more than {} argument(s)", m.name, m.params.size()));
    for (const auto& [k, v] : args.keyword) {
      bool known = false;
      for (const auto& p : m.params) known = known || p.first == k;
      if (!known) throw ValueError(fmt::format("macro '{}' takes no keyword argument '{}'", m.name, k));
    }
    const size_t saved_barrier = barrier_;
    barrier_ = scopes_.size();
    scopes_.emplace_back();
    ++macro_depth_;
    Text body;
    try {
      for (size_t i = 0; i < m.params.size(); ++i) {
        const std::string& name = m.params[i].first;
        Value v = Value::undefined(fmt::format("'{}' is undefined", name));
        bool given = false;
        if (i < args.positional.size()) {
          v = args.positional[i];
          given = true;
        }
        for (const auto& [k, x] : args.keyword) {
          if (k == name) v = x, given = true;
        }
        if (!given && m.params[i].second) v = eval(*m.params[i].second);
        assign(name, std::move(v));
      }
      body = capture(m.body);
    } catch (...) {
      --macro_depth_;
      scopes_.pop_back();
      barrier_ = saved_barrier;
      throw;
    }
    --macro_depth_;
    scopes_.pop_back();
    barrier_ = saved_barrier;
    return Value::string(std::move(body));
  }

  const RenderContext& context_;
  std::vector<Scope> scopes_;
  size_t barrier_ = 0;  // inside a macro: the first scope of its call (below it only the top level is visible)
  Text* out_ = nullptr;
  Value captured_;
  Budget budget_;
  int depth_ = 0;
  int macro_depth_ = 0;
};

}  // namespace

Text render(const Body& body, const RenderContext& context) { return Interpreter(context).run(body); }

}  // namespace tessera::chat::jinja
