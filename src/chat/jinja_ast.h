// The parsed form of a template: expressions and statements, each with the line it came from.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_value.h"

namespace tessera::chat::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind : uint8_t {
    Literal,   // value
    Name,      // name
    List,      // args: the items
    Tuple,     // args: the items
    DictLit,   // args: key, value, key, value, ...
    Attr,      // args[0].name
    Index,     // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]], absent parts null
    Call,      // args[0](args[1..], kwargs)
    Filter,    // args[0] | name(args[1..], kwargs)
    Test,      // args[0] is [not] name(args[1..], kwargs)
    Neg,       // -args[0]
    Pos,       // +args[0]
    Not,       // not args[0]
    And,       // args[0] and args[1]
    Or,        // args[0] or args[1]
    Binary,    // args[0] op args[1] for + - * / // % **
    Concat,    // args[0] ~ args[1] ~ ...
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ...
    Cond,      // args[0] if args[1] else args[2] (args[2] null: undefined)
    Captured,  // the text a {% set %} or {% filter %} block rendered (the subject of its filters)
  };

  Kind kind;
  int line;
  Value value;
  std::string name;              // Name, Attr, Filter, Test; the operator of Binary
  std::vector<std::string> ops;  // Compare: "==", "!=", "<", "<=", ">", ">=", "in", "not in"
  bool negated = false;          // Test
  int depth = 1;                 // of this subtree, bounded by the parser (kMaxExprDepth)
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;

  Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct MacroDef {
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default null: none given
  Body body;
};

struct Stmt {
  enum class Kind : uint8_t {
    Text,         // text
    Output,       // {{ expr }}
    If,           // branches: (condition, body); a final else has a null condition
    For,          // for targets in expr [if filter] body [else else_body]
    Set,          // set targets = expr, or set targets[0].attr = expr
    SetBlock,     // {% set targets[0] | filter %}body{% endset %}: filter is applied to Captured
    Macro,        // macro
    FilterBlock,  // {% filter f %}body{% endfilter %}: filter is applied to Captured
    Break,
    Continue,
  };

  Kind kind;
  int line;
  std::string text;
  ExprPtr expr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::string> targets;
  std::string attr;  // Set: the namespace attribute assigned, if any
  ExprPtr filter;    // For: the loop filter; SetBlock / FilterBlock: the filters over Captured (may be null)
  Body body;
  Body else_body;
  std::unique_ptr<MacroDef> macro;
  bool uses_loop = false;  // For: the body mentions `loop`, so each iteration needs the loop object

  Stmt(Kind k, int l) : kind(k), line(l) {}
};

}  // namespace tessera::chat::jinja
