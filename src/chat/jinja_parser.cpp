#include "chat/jinja_parser.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <initializer_list>

#include "chat/jinja_lexer.h"

namespace tessera::chat::jinja {

namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_template() {
    std::string end_tag;
    Body body = parse_body({}, &end_tag, 0);
    return body;
  }

 private:
  // ---- token stream ----
  const Token& cur() const { return tokens_[pos_]; }
  const Token& peek(size_t n = 1) const { return tokens_[std::min(pos_ + n, tokens_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool is_op(std::string_view op) const { return cur().kind == TokenKind::Operator && cur().value == op; }
  bool is_name(std::string_view name) const { return cur().kind == TokenKind::Name && cur().value == name; }
  bool accept_op(std::string_view op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool accept_name(std::string_view name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }
  [[noreturn]] void fail(const std::string& message) const { throw TemplateError(cur().line, message); }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::Text: return "text";
      case TokenKind::VariableBegin: return "'{{'";
      case TokenKind::VariableEnd: return "'}}'";
      case TokenKind::BlockBegin: return "'{%'";
      case TokenKind::BlockEnd: return "'%}'";
      case TokenKind::Name: return "'" + t.value + "'";
      case TokenKind::String: return "a string";
      case TokenKind::Integer:
      case TokenKind::Float: return "'" + t.value + "'";
      case TokenKind::Operator: return "'" + t.value + "'";
      case TokenKind::End: return "the end of the template";
    }
    return "a token";
  }
  void expect_op(std::string_view op) {
    if (!accept_op(op)) fail(fmt::format("expected '{}', found {}", op, describe(cur())));
  }
  std::string expect_name(std::string_view what) {
    if (cur().kind != TokenKind::Name) fail(fmt::format("expected {}, found {}", what, describe(cur())));
    std::string name = cur().value;
    advance();
    return name;
  }
  void expect_block_end() {
    if (cur().kind != TokenKind::BlockEnd) fail(fmt::format("expected '%}}', found {}", describe(cur())));
    advance();
  }

  // ---- nodes ----
  static ExprPtr node(Expr::Kind kind, int line) { return std::make_unique<Expr>(kind, line); }
  void add_arg(Expr& e, ExprPtr child) {
    if (child) {
      e.depth = std::max(e.depth, child->depth + 1);
      if (e.depth > kMaxExprDepth)
        throw TemplateError(e.line, fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    }
    e.args.push_back(std::move(child));
  }
  void add_kwarg(Expr& e, std::string name, ExprPtr child) {
    e.depth = std::max(e.depth, child->depth + 1);
    if (e.depth > kMaxExprDepth)
      throw TemplateError(e.line, fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    e.kwargs.emplace_back(std::move(name), std::move(child));
  }
  ExprPtr binary(Expr::Kind kind, std::string op, ExprPtr left, ExprPtr right, int line) {
    ExprPtr e = node(kind, line);
    e->name = std::move(op);
    add_arg(*e, std::move(left));
    add_arg(*e, std::move(right));
    return e;
  }

  // ---- statements ----
  // Parses statements until one of `end_tags` opens a block (left unconsumed after its name) or the template ends.
  Body parse_body(std::initializer_list<std::string_view> end_tags, std::string* end_tag, int depth) {
    if (depth > kMaxBlockDepth) fail(fmt::format("blocks nested deeper than {} levels", kMaxBlockDepth));
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.kind == TokenKind::End) {
        if (end_tags.size() != 0)
          fail(fmt::format("missing '{{% {} %}}' at the end of the template", *(end_tags.end() - 1)));
        return body;
      }
      if (t.kind == TokenKind::Text) {
        auto s = std::make_unique<Stmt>(Stmt::Kind::Text, t.line);
        s->text = t.value;
        body.push_back(std::move(s));
        advance();
      } else if (t.kind == TokenKind::VariableBegin) {
        advance();
        auto s = std::make_unique<Stmt>(Stmt::Kind::Output, t.line);
        s->expr = parse_tuple(true);
        if (cur().kind != TokenKind::VariableEnd) fail(fmt::format("expected '}}}}', found {}", describe(cur())));
        advance();
        body.push_back(std::move(s));
      } else if (t.kind == TokenKind::BlockBegin) {
        advance();
        const std::string tag = expect_name("a statement name");
        for (std::string_view e : end_tags) {
          if (tag == e) {
            *end_tag = tag;
            return body;
          }
        }
        body.push_back(parse_statement(tag, t.line, depth));
      } else {
        fail(fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  StmtPtr parse_statement(const std::string& tag, int line, int depth) {
    if (tag == "if") return parse_if(line, depth);
    if (tag == "for") return parse_for(line, depth);
    if (tag == "set") return parse_set(line, depth);
    if (tag == "macro") return parse_macro(line, depth);
    if (tag == "filter") return parse_filter_block(line, depth);
    if (tag == "generation") return parse_generation(line, depth);
    if (tag == "break" || tag == "continue") {
      expect_block_end();
      return std::make_unique<Stmt>(tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, line);
    }
    static constexpr std::string_view kEndTags[] = {"endif",     "endfor", "endset", "endmacro",
                                                    "endfilter", "elif",   "else",   "endgeneration"};
    for (std::string_view e : kEndTags)
      if (tag == e) throw TemplateError(line, fmt::format("unexpected '{{% {} %}}'", tag));
    throw TemplateError(line, fmt::format("unsupported statement '{{% {} %}}'", tag));
  }

  StmtPtr parse_if(int line, int depth) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::If, line);
    ExprPtr condition = parse_tuple(false);
    while (true) {
      expect_block_end();
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, &end, depth + 1);
      s->branches.emplace_back(std::move(condition), std::move(body));
      if (end == "elif") {
        condition = parse_tuple(false);
      } else if (end == "else") {
        expect_block_end();
        Body else_body = parse_body({"endif"}, &end, depth + 1);
        s->branches.emplace_back(nullptr, std::move(else_body));
        expect_block_end();
        return s;
      } else {
        expect_block_end();
        return s;
      }
    }
  }

  std::vector<std::string> parse_target_names() {
    std::vector<std::string> names;
    const bool parenthesized = accept_op("(");
    do {
      names.push_back(expect_name("a variable name"));
    } while (accept_op(",") && cur().kind == TokenKind::Name);
    if (parenthesized) expect_op(")");
    return names;
  }

  StmtPtr parse_for(int line, int depth) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::For, line);
    s->targets = parse_target_names();
    if (!accept_name("in")) fail(fmt::format("expected 'in', found {}", describe(cur())));
    s->expr = parse_tuple(false, /*for_iterable=*/true);
    if (accept_name("if")) s->filter = parse_expression(true);
    if (is_name("recursive")) fail("unsupported recursive for loop");
    expect_block_end();
    std::string end;
    const bool saved_loop_used = loop_used_;
    loop_used_ = false;
    s->body = parse_body({"else", "endfor"}, &end, depth + 1);
    s->uses_loop = loop_used_;
    loop_used_ = saved_loop_used || loop_used_;
    if (end == "else") {
      expect_block_end();
      s->else_body = parse_body({"endfor"}, &end, depth + 1);
    }
    expect_block_end();
    return s;
  }

  StmtPtr parse_set(int line, int depth) {
    std::vector<std::string> targets;
    std::string attr;
    const std::string first = expect_name("a variable name");
    targets.push_back(first);
    if (accept_op(".")) {
      attr = expect_name("an attribute name");
    } else {
      while (accept_op(",")) targets.push_back(expect_name("a variable name"));
    }
    if (accept_op("=")) {
      auto s = std::make_unique<Stmt>(Stmt::Kind::Set, line);
      s->targets = std::move(targets);
      s->attr = std::move(attr);
      s->expr = parse_tuple(true);
      expect_block_end();
      return s;
    }
    if (targets.size() != 1 || !attr.empty()) fail("a {% set %} block assigns one plain variable");
    auto s = std::make_unique<Stmt>(Stmt::Kind::SetBlock, line);
    s->targets = std::move(targets);
    if (is_op("|")) s->filter = parse_filter_chain(node(Expr::Kind::Captured, line));
    expect_block_end();
    std::string end;
    s->body = parse_body({"endset"}, &end, depth + 1);
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(int line, int depth) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::Macro, line);
    s->macro = std::make_unique<MacroDef>();
    s->macro->name = expect_name("a macro name");
    expect_op("(");
    while (!accept_op(")")) {
      if (!s->macro->params.empty()) expect_op(",");
      if (accept_op(")")) break;  // a trailing comma
      std::string param = expect_name("a parameter name");
      ExprPtr default_value;
      if (accept_op("=")) default_value = parse_expression(true);
      s->macro->params.emplace_back(std::move(param), std::move(default_value));
    }
    expect_block_end();
    std::string end;
    s->macro->body = parse_body({"endmacro"}, &end, depth + 1);
    if (cur().kind == TokenKind::Name && cur().value == s->macro->name) advance();  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block(int line, int depth) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::FilterBlock, line);
    s->filter = parse_filter_chain(node(Expr::Kind::Captured, line), /*leading_pipe=*/false);
    expect_block_end();
    std::string end;
    s->body = parse_body({"endfilter"}, &end, depth + 1);
    expect_block_end();
    return s;
  }

  // transformers' {% generation %} marks the assistant's text for training masks; rendering outputs its body.
  StmtPtr parse_generation(int line, int depth) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::FilterBlock, line);
    expect_block_end();
    std::string end;
    s->body = parse_body({"endgeneration"}, &end, depth + 1);
    expect_block_end();
    return s;
  }

  // ---- expressions (Jinja's precedence, loosest first) ----
  bool at_tuple_end(bool for_iterable) const {
    return cur().kind == TokenKind::VariableEnd || cur().kind == TokenKind::BlockEnd || is_op(")") ||
           (for_iterable && (is_name("if") || is_name("recursive")));
  }

  ExprPtr parse_tuple(bool with_condexpr, bool for_iterable = false) {
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool comma = false;
    while (true) {
      if (!items.empty()) {
        if (!accept_op(",")) break;
        comma = true;
        if (at_tuple_end(for_iterable)) break;
      }
      items.push_back(parse_expression(with_condexpr));
    }
    if (!comma) return std::move(items[0]);
    ExprPtr t = node(Expr::Kind::Tuple, line);
    for (auto& item : items) add_arg(*t, std::move(item));
    return t;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr(0) : parse_or(); }

  ExprPtr parse_condexpr(int chain) {
    if (chain > kMaxExprDepth) fail(fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      advance();
      ExprPtr test = parse_or();
      ExprPtr otherwise;
      if (accept_name("else")) otherwise = parse_condexpr(chain + 1);
      ExprPtr c = node(Expr::Kind::Cond, line);
      add_arg(*c, std::move(expr));
      add_arg(*c, std::move(test));
      add_arg(*c, std::move(otherwise));
      expr = std::move(c);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const int line = cur().line;
      advance();
      left = binary(Expr::Kind::Or, "or", std::move(left), parse_and(), line);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not(0);
    while (is_name("and")) {
      const int line = cur().line;
      advance();
      left = binary(Expr::Kind::And, "and", std::move(left), parse_not(0), line);
    }
    return left;
  }

  ExprPtr parse_not(int chain) {
    if (is_name("not")) {
      if (chain > kMaxExprDepth) fail(fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
      const int line = cur().line;
      advance();
      ExprPtr n = node(Expr::Kind::Not, line);
      add_arg(*n, parse_not(chain + 1));
      return n;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().kind == TokenKind::Operator && (cur().value == "==" || cur().value == "!=" || cur().value == "<" ||
                                                cur().value == "<=" || cur().value == ">" || cur().value == ">=")) {
        op = cur().value;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().kind == TokenKind::Name && peek().value == "in") {
        op = "not in";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::Compare, line);
        add_arg(*cmp, std::move(first));
      }
      cmp->ops.push_back(op);
      add_arg(*cmp, parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      left = binary(Expr::Kind::Binary, op, std::move(left), parse_concat(), line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    const int line = cur().line;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    ExprPtr c = node(Expr::Kind::Concat, line);
    add_arg(*c, std::move(first));
    while (accept_op("~")) add_arg(*c, parse_math2());
    return c;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      left = binary(Expr::Kind::Binary, op, std::move(left), parse_pow(), line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true, 0);
    while (is_op("**")) {
      const int line = cur().line;
      advance();
      left = binary(Expr::Kind::Binary, "**", std::move(left), parse_unary(true, 0), line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter, int chain) {
    if (++nesting_ > kMaxExprDepth || chain > kMaxExprDepth)
      fail(fmt::format("expression nested deeper than {} levels", kMaxExprDepth));
    const int line = cur().line;
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      advance();
      e = node(neg ? Expr::Kind::Neg : Expr::Kind::Pos, line);
      add_arg(*e, parse_unary(false, chain + 1));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    --nesting_;
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    const int line = t.line;
    switch (t.kind) {
      case TokenKind::Name: {
        ExprPtr e = node(Expr::Kind::Literal, line);
        if (t.value == "true" || t.value == "True")
          e->value = Value::boolean(true);
        else if (t.value == "false" || t.value == "False")
          e->value = Value::boolean(false);
        else if (t.value == "none" || t.value == "None")
          e->value = Value::none();
        else {
          e->kind = Expr::Kind::Name;
          e->name = t.value;
          loop_used_ = loop_used_ || t.value == "loop";
        }
        advance();
        return e;
      }
      case TokenKind::String: {
        std::string s;
        while (cur().kind == TokenKind::String) {  // adjacent literals concatenate
          s += cur().value;
          advance();
        }
        ExprPtr e = node(Expr::Kind::Literal, line);
        e->value = Value::string(std::move(s));
        return e;
      }
      case TokenKind::Integer: {
        int64_t v = 0;
        const auto [p, ec] = std::from_chars(t.value.data(), t.value.data() + t.value.size(), v);
        if (ec != std::errc() || p != t.value.data() + t.value.size())
          fail(fmt::format("integer literal {} is out of range", t.value));
        ExprPtr e = node(Expr::Kind::Literal, line);
        e->value = Value::integer(v);
        advance();
        return e;
      }
      case TokenKind::Float: {
        ExprPtr e = node(Expr::Kind::Literal, line);
        e->value = Value::floating(std::strtod(t.value.c_str(), nullptr));
        advance();
        return e;
      }
      case TokenKind::Operator:
        if (t.value == "(") {
          advance();
          if (accept_op(")")) {
            ExprPtr e = node(Expr::Kind::Tuple, line);
            return e;
          }
          ExprPtr e = parse_tuple(true);
          expect_op(")");
          return e;
        }
        if (t.value == "[") {
          advance();
          ExprPtr e = node(Expr::Kind::List, line);
          while (!accept_op("]")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (accept_op("]")) break;
            }
            add_arg(*e, parse_expression(true));
          }
          return e;
        }
        if (t.value == "{") {
          advance();
          ExprPtr e = node(Expr::Kind::DictLit, line);
          while (!accept_op("}")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (accept_op("}")) break;
            }
            add_arg(*e, parse_expression(true));
            expect_op(":");
            add_arg(*e, parse_expression(true));
          }
          return e;
        }
        break;
      default: break;
    }
    fail(fmt::format("unexpected {}", describe(t)));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr subject) {
    const int line = cur().line;
    if (accept_op(".")) {
      if (cur().kind == TokenKind::Name) {
        ExprPtr e = node(Expr::Kind::Attr, line);
        e->name = cur().value;
        advance();
        add_arg(*e, std::move(subject));
        return e;
      }
      if (cur().kind == TokenKind::Integer) {  // x.0 is x[0]
        ExprPtr index = parse_primary();
        ExprPtr e = node(Expr::Kind::Index, line);
        add_arg(*e, std::move(subject));
        add_arg(*e, std::move(index));
        return e;
      }
      fail(fmt::format("expected an attribute name, found {}", describe(cur())));
    }
    expect_op("[");
    ExprPtr parts[3];
    int n_parts = 0;
    bool is_slice = false;
    while (true) {
      if (!is_op(":") && !is_op("]")) parts[n_parts] = parse_expression(true);
      if (!accept_op(":")) break;
      is_slice = true;
      if (++n_parts > 2) fail("a slice has at most three parts");
    }
    if (is_op(",")) fail("unsupported tuple subscript");
    expect_op("]");
    if (!is_slice) {
      if (!parts[0]) fail("empty subscript");
      ExprPtr e = node(Expr::Kind::Index, line);
      add_arg(*e, std::move(subject));
      add_arg(*e, std::move(parts[0]));
      return e;
    }
    ExprPtr e = node(Expr::Kind::Slice, line);
    add_arg(*e, std::move(subject));
    for (auto& p : parts) add_arg(*e, std::move(p));
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!accept_op(")")) {
      if (!first) {
        expect_op(",");
        if (accept_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) fail("unsupported *args or **kwargs in a call");
      if (cur().kind == TokenKind::Name && peek().kind == TokenKind::Operator && peek().value == "=") {
        std::string name = cur().value;
        advance();
        advance();
        add_kwarg(e, std::move(name), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail("a positional argument follows a keyword argument");
        add_arg(e, parse_expression(true));
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    ExprPtr e = node(Expr::Kind::Call, cur().line);
    add_arg(*e, std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_chain(ExprPtr subject, bool leading_pipe = true) {
    bool first = true;
    while (first ? (!leading_pipe || is_op("|")) : is_op("|")) {
      if (leading_pipe || !first) expect_op("|");
      first = false;
      const int line = cur().line;
      std::string name = expect_name("a filter name");
      while (is_op(".") && peek().kind == TokenKind::Name) {  // dotted filter names
        advance();
        name += "." + cur().value;
        advance();
      }
      if (!is_supported_filter(name)) throw TemplateError(line, fmt::format("unsupported filter '{}'", name));
      ExprPtr f = node(Expr::Kind::Filter, line);
      f->name = std::move(name);
      add_arg(*f, std::move(subject));
      if (is_op("(")) parse_call_args(*f);
      subject = std::move(f);
    }
    return subject;
  }

  ExprPtr parse_test(ExprPtr subject) {
    const int line = cur().line;
    advance();  // is
    const bool negated = accept_name("not");
    std::string name = expect_name("a test name");
    while (is_op(".") && peek().kind == TokenKind::Name) {
      advance();
      name += "." + cur().value;
      advance();
    }
    if (!is_supported_test(name)) throw TemplateError(line, fmt::format("unsupported test '{}'", name));
    ExprPtr t = node(Expr::Kind::Test, line);
    t->name = std::move(name);
    t->negated = negated;
    add_arg(*t, std::move(subject));
    if (is_op("(")) {
      parse_call_args(*t);
    } else if ((cur().kind == TokenKind::Name || cur().kind == TokenKind::String || cur().kind == TokenKind::Integer ||
                cur().kind == TokenKind::Float || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("tests cannot be chained with 'is'");
      add_arg(*t, parse_postfix(parse_primary()));  // `x is divisibleby 3`, `x is sameas none`
    }
    return t;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int nesting_ = 0;
  bool loop_used_ = false;  // whether the for body being parsed refers to `loop`
};

}  // namespace

Body parse(std::string_view source) { return Parser(tokenize(source)).parse_template(); }

}  // namespace tessera::chat::jinja
