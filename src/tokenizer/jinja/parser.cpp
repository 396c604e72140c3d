#include "tokenizer/jinja/parser.h"

#include <charconv>
#include <cstdlib>
#include <initializer_list>

#include "tokenizer/jinja/lexer.h"

namespace philora::tokenizer::jinja {

namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}
  int depth_ = 0;  // parse_body and parse_unary calls in progress (Nesting)

  Expected<Body> parse_template() {
    std::string stop;
    PHILORA_ASSIGN_OR_RETURN(Body body, parse_body({}, stop));
    return body;
  }

 private:
  // ---- token stream ----
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  bool is_op(std::string_view op) const {
    return cur().type == Tok::kOperator && cur().value == op;
  }
  bool is_name(std::string_view n) const { return cur().type == Tok::kName && cur().value == n; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool skip_name(std::string_view n) {
    if (!is_name(n)) return false;
    advance();
    return true;
  }
  Status fail(const std::string& msg) const {
    return Status::errorf("line {}: {}", cur().line, msg);
  }
  // An integer literal (Python's are unbounded; ours are 64-bit).
  Expected<Value> integer(const std::string& digits) const {
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec != std::errc() || end != digits.data() + digits.size())
      return fail(fmt::format("integer literal {} is out of range", digits));
    return Value(v);
  }
  // Expressions and blocks nest at most kMaxNesting deep (real templates: a
  // few), so that no template can exhaust the stack of the parser or of the
  // interpreter that walks its tree.
  static constexpr int kMaxNesting = 100;
  static constexpr const char* kTooDeep = "expressions or blocks nested more than 100 deep";
  struct Nesting {
    explicit Nesting(Parser& p) : p(p) { ++p.depth_; }
    ~Nesting() { --p.depth_; }
    bool too_deep() const { return p.depth_ > kMaxNesting; }
    Parser& p;
  };
  std::string describe() const {
    switch (cur().type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kVarEnd:
        return "end of print statement";
      case Tok::kData:
        return "template data";
      default:
        return "'" + cur().value + "'";
    }
  }
  Status expect_op(std::string_view op) {
    if (!skip_op(op)) return fail(fmt::format("expected '{}', got {}", op, describe()));
    return Status();
  }
  Expected<std::string> expect_name() {
    if (cur().type != Tok::kName) return fail("expected a name, got " + describe());
    std::string n = cur().value;
    advance();
    return n;
  }
  Status expect_block_end() {
    if (cur().type != Tok::kBlockEnd)
      return fail("expected end of statement block, got " + describe());
    advance();
    return Status();
  }

  // ---- statements ----
  // Parses statements until a block tag named in `stops` (its name is consumed and stored in
  // `stop`; the rest of that tag is left to the caller).
  Expected<Body> parse_body(std::initializer_list<std::string_view> stops, std::string& stop) {
    Nesting nesting(*this);
    if (nesting.too_deep()) return fail(kTooDeep);
    Body body;
    while (true) {
      const Token& tok = cur();
      if (tok.type == Tok::kEof) {
        if (stops.size() == 0) return body;
        std::string want;
        for (std::string_view st : stops)
          want += (want.empty() ? "'" : " or '") + std::string(st) + "'";
        return fail("unexpected end of template, looking for " + want);
      }
      if (tok.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->line = tok.line;
        s->text = tok.value;
        body.push_back(std::move(s));
        advance();
        continue;
      }
      if (tok.type == Tok::kVarBegin) {
        advance();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kPrint;
        s->line = tok.line;
        PHILORA_ASSIGN_OR_RETURN(s->expr, parse_tuple(false, true, {}, false));
        if (cur().type != Tok::kVarEnd)
          return fail("expected end of print statement, got " + describe());
        advance();
        body.push_back(std::move(s));
        continue;
      }
      if (tok.type != Tok::kBlockBegin) return fail("unexpected " + describe());
      advance();
      if (cur().type != Tok::kName) return fail("expected a statement name, got " + describe());
      const std::string name = cur().value;
      for (std::string_view s : stops) {
        if (name == s) {
          advance();
          stop = name;
          return body;
        }
      }
      PHILORA_ASSIGN_OR_RETURN(StmtPtr stmt, parse_statement(name));
      body.push_back(std::move(stmt));
    }
  }

  Expected<StmtPtr> parse_statement(const std::string& name) {
    const int line = cur().line;
    auto s = std::make_unique<Stmt>();
    s->line = line;
    advance();  // the statement name
    std::string stop;
    if (name == "if") {
      s->kind = Stmt::Kind::kIf;
      while (true) {
        PHILORA_ASSIGN_OR_RETURN(ExprPtr cond, parse_tuple(false, false, {}, false));
        PHILORA_RETURN_IF_ERROR(expect_block_end());
        PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"elif", "else", "endif"}, stop));
        s->conds.push_back(std::move(cond));
        s->bodies.push_back(std::move(b));
        if (stop == "elif") continue;
        if (stop == "else") {
          PHILORA_RETURN_IF_ERROR(expect_block_end());
          PHILORA_ASSIGN_OR_RETURN(s->else_body, parse_body({"endif"}, stop));
        }
        PHILORA_RETURN_IF_ERROR(expect_block_end());
        return s;
      }
    }
    if (name == "for") {
      s->kind = Stmt::Kind::kFor;
      const bool paren = skip_op("(");
      do {
        PHILORA_ASSIGN_OR_RETURN(std::string target, expect_name());
        s->targets.push_back(target);
      } while (skip_op(",") && !is_name("in"));
      if (paren) PHILORA_RETURN_IF_ERROR(expect_op(")"));
      if (!skip_name("in")) return fail("expected 'in', got " + describe());
      PHILORA_ASSIGN_OR_RETURN(s->expr, parse_tuple(false, false, {"recursive"}, false));
      if (skip_name("if")) {
        PHILORA_ASSIGN_OR_RETURN(s->cond, parse_expression(true));
      }
      if (is_name("recursive")) return fail("recursive for loops are not supported");
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"endfor", "else"}, stop));
      s->bodies.push_back(std::move(b));
      if (stop == "else") {
        PHILORA_RETURN_IF_ERROR(expect_block_end());
        PHILORA_ASSIGN_OR_RETURN(s->else_body, parse_body({"endfor"}, stop));
      }
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    if (name == "set") {
      PHILORA_ASSIGN_OR_RETURN(std::string target, expect_name());
      s->targets.push_back(target);
      if (skip_op(".")) {
        PHILORA_ASSIGN_OR_RETURN(std::string attr, expect_name());
        s->targets.push_back(attr);
      } else if (is_op(",")) {
        return fail("tuple unpacking in set is not supported");
      }
      if (skip_op("=")) {
        s->kind = Stmt::Kind::kSet;
        PHILORA_ASSIGN_OR_RETURN(s->expr, parse_tuple(false, true, {}, false));
        PHILORA_RETURN_IF_ERROR(expect_block_end());
        return s;
      }
      s->kind = Stmt::Kind::kSetBlock;
      if (is_op("|")) {
        PHILORA_ASSIGN_OR_RETURN(s->expr, parse_filter(nullptr, false));
      }
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"endset"}, stop));
      s->bodies.push_back(std::move(b));
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    if (name == "macro") {
      s->kind = Stmt::Kind::kMacro;
      PHILORA_ASSIGN_OR_RETURN(s->name, expect_name());
      PHILORA_RETURN_IF_ERROR(expect_op("("));
      while (!is_op(")")) {
        if (!s->params.empty()) PHILORA_RETURN_IF_ERROR(expect_op(","));
        if (is_op(")")) break;
        PHILORA_ASSIGN_OR_RETURN(std::string p, expect_name());
        s->params.push_back(p);
        ExprPtr def;
        if (skip_op("=")) {
          PHILORA_ASSIGN_OR_RETURN(def, parse_expression(true));
        }
        s->defaults.push_back(std::move(def));
      }
      advance();
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"endmacro"}, stop));
      s->bodies.push_back(std::move(b));
      if (cur().type == Tok::kName) advance();  // {% endmacro name %}
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    if (name == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      PHILORA_ASSIGN_OR_RETURN(s->expr, parse_filter(nullptr, true));
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"endfilter"}, stop));
      s->bodies.push_back(std::move(b));
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    if (name == "generation") {
      s->kind = Stmt::Kind::kScope;
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      PHILORA_ASSIGN_OR_RETURN(Body b, parse_body({"endgeneration"}, stop));
      s->bodies.push_back(std::move(b));
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    if (name == "break" || name == "continue") {
      s->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      PHILORA_RETURN_IF_ERROR(expect_block_end());
      return s;
    }
    return Status::errorf("line {}: the '{}' statement is not supported", line, name);
  }

  // ---- expressions ----
  bool is_tuple_end(std::initializer_list<std::string_view> extra) const {
    if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || cur().type == Tok::kEof ||
        is_op(")"))
      return true;
    for (std::string_view e : extra)
      if (is_name(e)) return true;
    return false;
  }

  Expected<ExprPtr> parse_tuple(bool simplified, bool with_condexpr,
                                std::initializer_list<std::string_view> extra,
                                bool explicit_parens) {
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) PHILORA_RETURN_IF_ERROR(expect_op(","));
      if (is_tuple_end(extra)) break;
      ExprPtr e;
      if (simplified) {
        PHILORA_ASSIGN_OR_RETURN(e, parse_primary());
      } else {
        PHILORA_ASSIGN_OR_RETURN(e, parse_expression(with_condexpr));
      }
      items.push_back(std::move(e));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) return fail("expected an expression, got " + describe());
    }
    auto t = make(Expr::Kind::kTuple, line);
    t->args = std::move(items);
    return t;
  }

  static ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }
  static ExprPtr binary(std::string op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::Kind::kBinary, line);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  Expected<ExprPtr> parse_expression(bool with_condexpr) {
    if (!with_condexpr) return parse_or();
    const int line = cur().line;
    PHILORA_ASSIGN_OR_RETURN(ExprPtr e, parse_or());
    while (skip_name("if")) {
      PHILORA_ASSIGN_OR_RETURN(ExprPtr test, parse_or());
      ExprPtr otherwise;
      if (skip_name("else")) {
        PHILORA_ASSIGN_OR_RETURN(otherwise, parse_expression(true));
      }
      auto c = make(Expr::Kind::kCondExpr, line);
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(test));
      c->args.push_back(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  Expected<ExprPtr> parse_or() {
    PHILORA_ASSIGN_OR_RETURN(ExprPtr left, parse_and());
    while (is_name("or")) {
      const int line = cur().line;
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr right, parse_and());
      left = binary("or", std::move(left), std::move(right), line);
    }
    return left;
  }

  Expected<ExprPtr> parse_and() {
    PHILORA_ASSIGN_OR_RETURN(ExprPtr left, parse_not());
    while (is_name("and")) {
      const int line = cur().line;
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr right, parse_not());
      left = binary("and", std::move(left), std::move(right), line);
    }
    return left;
  }

  Expected<ExprPtr> parse_not() {
    if (is_name("not")) {
      auto e = make(Expr::Kind::kNot, cur().line);
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
      e->args.push_back(std::move(operand));
      return e;
    }
    return parse_compare();
  }

  Expected<ExprPtr> parse_compare() {
    const int line = cur().line;
    PHILORA_ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOperator &&
          (cur().value == "==" || cur().value == "!=" || cur().value == "<" || cur().value == ">" ||
           cur().value == "<=" || cur().value == ">=")) {
        op = cur().value;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().type == Tok::kName && peek().value == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::kCompare, line);
        cmp->args.push_back(std::move(first));
      }
      PHILORA_ASSIGN_OR_RETURN(ExprPtr rhs, parse_math1());
      cmp->ops.push_back(op);
      cmp->args.push_back(std::move(rhs));
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  Expected<ExprPtr> parse_math1() {
    PHILORA_ASSIGN_OR_RETURN(ExprPtr left, parse_concat());
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
      left = binary(op, std::move(left), std::move(right), line);
    }
    return left;
  }

  Expected<ExprPtr> parse_concat() {
    const int line = cur().line;
    PHILORA_ASSIGN_OR_RETURN(ExprPtr first, parse_math2());
    if (!is_op("~")) return first;
    auto c = make(Expr::Kind::kConcat, line);
    c->args.push_back(std::move(first));
    while (skip_op("~")) {
      PHILORA_ASSIGN_OR_RETURN(ExprPtr next, parse_math2());
      c->args.push_back(std::move(next));
    }
    return c;
  }

  Expected<ExprPtr> parse_math2() {
    PHILORA_ASSIGN_OR_RETURN(ExprPtr left, parse_pow());
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
      left = binary(op, std::move(left), std::move(right), line);
    }
    return left;
  }

  Expected<ExprPtr> parse_pow() {
    PHILORA_ASSIGN_OR_RETURN(ExprPtr left, parse_unary(true));
    while (is_op("**")) {
      const int line = cur().line;
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr right, parse_unary(true));
      left = binary("**", std::move(left), std::move(right), line);
    }
    return left;
  }

  Expected<ExprPtr> parse_unary(bool with_filter) {
    Nesting nesting(*this);
    if (nesting.too_deep()) return fail(kTooDeep);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      node = make(is_op("-") ? Expr::Kind::kNeg : Expr::Kind::kPos, cur().line);
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr operand, parse_unary(false));
      node->args.push_back(std::move(operand));
    } else {
      PHILORA_ASSIGN_OR_RETURN(node, parse_primary());
    }
    PHILORA_ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
    if (with_filter) {
      PHILORA_ASSIGN_OR_RETURN(node, parse_filter_expr(std::move(node)));
    }
    return node;
  }

  Expected<ExprPtr> parse_primary() {
    const Token tok = cur();
    if (tok.type == Tok::kName) {
      advance();
      if (tok.value == "true" || tok.value == "True" || tok.value == "false" ||
          tok.value == "False") {
        auto e = make(Expr::Kind::kConst, tok.line);
        e->value = Value(tok.value == "true" || tok.value == "True");
        return e;
      }
      if (tok.value == "none" || tok.value == "None") {
        auto e = make(Expr::Kind::kConst, tok.line);
        e->value = Value::none();
        return e;
      }
      auto e = make(Expr::Kind::kName, tok.line);
      e->name = tok.value;
      return e;
    }
    if (tok.type == Tok::kString) {
      std::string s;
      while (cur().type == Tok::kString) {
        s += cur().value;
        advance();
      }
      auto e = make(Expr::Kind::kConst, tok.line);
      e->value = Value(std::move(s));
      return e;
    }
    if (tok.type == Tok::kInteger || tok.type == Tok::kFloat) {
      advance();
      auto e = make(Expr::Kind::kConst, tok.line);
      if (tok.type == Tok::kInteger) {
        PHILORA_ASSIGN_OR_RETURN(e->value, integer(tok.value));
      } else {
        e->value = Value(std::strtod(tok.value.c_str(), nullptr));  // overflow: inf, as Python
      }
      return e;
    }
    if (is_op("(")) {
      advance();
      PHILORA_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, true));
      PHILORA_RETURN_IF_ERROR(expect_op(")"));
      return e;
    }
    if (is_op("[")) {
      advance();
      auto e = make(Expr::Kind::kList, tok.line);
      while (!is_op("]")) {
        if (!e->args.empty()) PHILORA_RETURN_IF_ERROR(expect_op(","));
        if (is_op("]")) break;
        PHILORA_ASSIGN_OR_RETURN(ExprPtr item, parse_expression(true));
        e->args.push_back(std::move(item));
      }
      advance();
      return e;
    }
    if (is_op("{")) {
      advance();
      auto e = make(Expr::Kind::kDict, tok.line);
      while (!is_op("}")) {
        if (!e->args.empty()) PHILORA_RETURN_IF_ERROR(expect_op(","));
        if (is_op("}")) break;
        PHILORA_ASSIGN_OR_RETURN(ExprPtr key, parse_expression(true));
        PHILORA_RETURN_IF_ERROR(expect_op(":"));
        PHILORA_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e->args.push_back(std::move(key));
        e->args.push_back(std::move(value));
      }
      advance();
      return e;
    }
    return fail("unexpected " + describe());
  }

  Expected<ExprPtr> parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        PHILORA_ASSIGN_OR_RETURN(node, parse_subscript(std::move(node)));
      } else if (is_op("(")) {
        PHILORA_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  Expected<ExprPtr> parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        PHILORA_ASSIGN_OR_RETURN(node, parse_filter(std::move(node), false));
      } else if (is_name("is")) {
        PHILORA_ASSIGN_OR_RETURN(node, parse_test(std::move(node)));
      } else if (is_op("(")) {
        PHILORA_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  Expected<ExprPtr> parse_subscript(ExprPtr node) {
    const int line = cur().line;
    if (skip_op(".")) {
      if (cur().type == Tok::kName) {
        auto e = make(Expr::Kind::kGetattr, line);
        e->name = cur().value;
        advance();
        e->args.push_back(std::move(node));
        return e;
      }
      if (cur().type == Tok::kInteger) {
        auto e = make(Expr::Kind::kGetitem, line);
        auto idx = make(Expr::Kind::kConst, line);
        PHILORA_ASSIGN_OR_RETURN(idx->value, integer(cur().value));
        advance();
        e->args.push_back(std::move(node));
        e->args.push_back(std::move(idx));
        return e;
      }
      return fail("expected name or number after '.'");
    }
    advance();  // [
    std::vector<ExprPtr> items;
    while (!is_op("]")) {
      if (!items.empty()) PHILORA_RETURN_IF_ERROR(expect_op(","));
      PHILORA_ASSIGN_OR_RETURN(ExprPtr item, parse_subscribed());
      items.push_back(std::move(item));
    }
    advance();
    auto e = make(Expr::Kind::kGetitem, line);
    e->args.push_back(std::move(node));
    if (items.size() == 1) {
      e->args.push_back(std::move(items[0]));
    } else {
      auto t = make(Expr::Kind::kTuple, line);
      t->args = std::move(items);
      e->args.push_back(std::move(t));
    }
    return e;
  }

  Expected<ExprPtr> parse_subscribed() {
    const int line = cur().line;
    ExprPtr start;
    if (!is_op(":")) {
      PHILORA_ASSIGN_OR_RETURN(start, parse_expression(true));
      if (!is_op(":")) return start;
    }
    advance();  // :
    auto slice = make(Expr::Kind::kSlice, line);
    slice->args.push_back(std::move(start));
    ExprPtr stop, step;
    if (!is_op(":") && !is_op("]") && !is_op(",")) {
      PHILORA_ASSIGN_OR_RETURN(stop, parse_expression(true));
    }
    if (skip_op(":")) {
      if (!is_op("]") && !is_op(",")) {
        PHILORA_ASSIGN_OR_RETURN(step, parse_expression(true));
      }
    }
    slice->args.push_back(std::move(stop));
    slice->args.push_back(std::move(step));
    return slice;
  }

  Status parse_call_args(Expr& call) {
    PHILORA_RETURN_IF_ERROR(expect_op("("));
    bool need_comma = false;
    while (!is_op(")")) {
      if (need_comma) {
        PHILORA_RETURN_IF_ERROR(expect_op(","));
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) return fail("*args and **kwargs in calls are not supported");
      if (cur().type == Tok::kName && peek().type == Tok::kOperator && peek().value == "=") {
        std::string key = cur().value;
        advance();
        advance();
        PHILORA_ASSIGN_OR_RETURN(ExprPtr v, parse_expression(true));
        call.kwargs.emplace_back(std::move(key), std::move(v));
      } else {
        if (!call.kwargs.empty()) return fail("positional argument after keyword argument");
        PHILORA_ASSIGN_OR_RETURN(ExprPtr v, parse_expression(true));
        call.args.push_back(std::move(v));
      }
      need_comma = true;
    }
    advance();
    return Status();
  }

  Expected<ExprPtr> parse_call(ExprPtr node) {
    auto e = make(Expr::Kind::kCall, cur().line);
    e->args.push_back(std::move(node));
    PHILORA_RETURN_IF_ERROR(parse_call_args(*e));
    return e;
  }

  Expected<ExprPtr> parse_filter(ExprPtr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) advance();
      start_inline = false;
      auto f = make(Expr::Kind::kFilter, cur().line);
      PHILORA_ASSIGN_OR_RETURN(f->name, expect_name());
      while (skip_op(".")) {
        PHILORA_ASSIGN_OR_RETURN(std::string part, expect_name());
        f->name += "." + part;
      }
      f->args.push_back(std::move(node));
      if (is_op("(")) PHILORA_RETURN_IF_ERROR(parse_call_args(*f));
      node = std::move(f);
    }
    return node;
  }

  Expected<ExprPtr> parse_test(ExprPtr node) {
    auto t = make(Expr::Kind::kTest, cur().line);
    advance();  // is
    if (skip_name("not")) t->negated = true;
    PHILORA_ASSIGN_OR_RETURN(t->name, expect_name());
    t->args.push_back(std::move(node));
    if (is_op("(")) {
      PHILORA_RETURN_IF_ERROR(parse_call_args(*t));
    } else if ((cur().type == Tok::kName || cur().type == Tok::kString ||
                cur().type == Tok::kInteger || cur().type == Tok::kFloat || is_op("[") ||
                is_op("{") || is_op("(")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) return fail("you cannot chain multiple tests with is");
      PHILORA_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
      PHILORA_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
      t->args.push_back(std::move(arg));
    }
    return t;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
};

}  // namespace

Expected<Body> parse(std::string_view source) {
  PHILORA_ASSIGN_OR_RETURN(std::vector<Token> tokens, lex(source));
  Parser p(std::move(tokens));
  return p.parse_template();
}

}  // namespace philora::tokenizer::jinja
