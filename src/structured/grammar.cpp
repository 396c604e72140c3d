#include "structured/grammar.h"

#include <map>

#include "tokenizer/unicode.h"

namespace philora::structured {

namespace {

constexpr int kMaxRepeat = 1000;
constexpr int kMaxNesting = 200;

// ---- GBNF -------------------------------------------------------------------------------------

class GbnfParser {
 public:
  explicit GbnfParser(std::string_view text) : s_(text) {}

  Expected<Grammar> parse() {
    skip_space(/*newlines=*/true);
    while (pos_ < s_.size()) {
      PHILORA_RETURN_IF_ERROR(rule());
      skip_space(true);
    }
    for (size_t i = 0; i < g_.rules.size(); ++i) {
      if (!defined_[i]) {
        return Status::errorf("grammar: rule '{}' is used but never defined", g_.rules[i].name);
      }
    }
    auto root = ids_.find("root");
    if (root == ids_.end()) return Status::error("grammar: no rule named 'root'");
    g_.root = root->second;
    return std::move(g_);
  }

 private:
  Status error(const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return Status::errorf("grammar: {} at line {} column {}", what, line, col);
  }

  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
  }

  void skip_space(bool newlines) {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
        ++pos_;
      } else {
        break;
      }
    }
  }

  int rule_id(const std::string& name) {
    auto it = ids_.find(name);
    if (it != ids_.end()) return it->second;
    const int id = g_.add_rule(name);
    ids_.emplace(name, id);
    defined_.push_back(0);
    return id;
  }

  Status rule() {
    const size_t start = pos_;
    while (pos_ < s_.size() && name_char(s_[pos_])) ++pos_;
    if (pos_ == start) return error("expected a rule name");
    const std::string name(s_.substr(start, pos_ - start));
    skip_space(false);
    if (s_.substr(pos_, 3) != "::=") return error("expected '::=' after rule name '" + name + "'");
    pos_ += 3;
    skip_space(true);
    const int id = rule_id(name);
    if (defined_[id]) return error("rule '" + name + "' is defined twice");
    defined_[id] = 1;
    PHILORA_ASSIGN_OR_RETURN(Expr body, alternatives(0));
    g_.rules[id].body = std::move(body);
    skip_space(false);
    if (pos_ < s_.size() && s_[pos_] != '\n' && s_[pos_] != '\r') {
      return error(fmt::format("unexpected '{}'", s_[pos_]));
    }
    return Status();
  }

  Expected<Expr> alternatives(int depth) {
    if (depth > kMaxNesting) return error("groups nested too deeply");
    std::vector<Expr> alts;
    for (;;) {
      PHILORA_ASSIGN_OR_RETURN(Expr seq, sequence(depth));
      alts.push_back(std::move(seq));
      skip_space(depth > 0);
      if (pos_ < s_.size() && s_[pos_] == '|') {
        ++pos_;
        skip_space(true);
        continue;
      }
      break;
    }
    return alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
  }

  Expected<Expr> sequence(int depth) {
    std::vector<Expr> items;
    for (;;) {
      skip_space(depth > 0);
      if (pos_ >= s_.size()) break;
      const char c = s_[pos_];
      if (c == '|' || c == ')' || c == '\n' || c == '\r') break;
      // A name followed by ::= starts the next rule (only possible at depth 0 after a newline,
      // which already ended the sequence; this catches a missing newline).
      Expr item;
      if (c == '"') {
        PHILORA_ASSIGN_OR_RETURN(item, literal());
      } else if (c == '[') {
        PHILORA_ASSIGN_OR_RETURN(item, char_class());
      } else if (c == '.') {
        ++pos_;
        item = Expr::cls({{0, kMaxCodePoint}});
      } else if (c == '(') {
        ++pos_;
        skip_space(true);
        PHILORA_ASSIGN_OR_RETURN(item, alternatives(depth + 1));
        skip_space(true);
        if (pos_ >= s_.size() || s_[pos_] != ')') return error("expected ')'");
        ++pos_;
      } else if (name_char(c)) {
        const size_t start = pos_;
        while (pos_ < s_.size() && name_char(s_[pos_])) ++pos_;
        const std::string name(s_.substr(start, pos_ - start));
        size_t look = pos_;
        while (look < s_.size() && (s_[look] == ' ' || s_[look] == '\t')) ++look;
        if (s_.substr(look, 3) == "::=") {
          pos_ = start;
          return error("a new rule must start on a new line");
        }
        item = Expr::ref(rule_id(name));
      } else {
        return error(fmt::format("unexpected '{}'", c));
      }
      PHILORA_ASSIGN_OR_RETURN(item, postfix(std::move(item)));
      items.push_back(std::move(item));
    }
    return items.size() == 1 ? std::move(items[0]) : Expr::seq(std::move(items));
  }

  Expected<Expr> postfix(Expr item) {
    if (pos_ >= s_.size()) return item;
    const char c = s_[pos_];
    if (c == '*') {
      ++pos_;
      return Expr::star(std::move(item));
    }
    if (c == '+') {
      ++pos_;
      return Expr::repeat(std::move(item), 1, -1);
    }
    if (c == '?') {
      ++pos_;
      return Expr::opt(std::move(item));
    }
    if (c != '{') return item;
    ++pos_;
    skip_space(false);
    PHILORA_ASSIGN_OR_RETURN(int min, integer());
    int max = min;
    skip_space(false);
    if (pos_ < s_.size() && s_[pos_] == ',') {
      ++pos_;
      skip_space(false);
      max = -1;
      if (pos_ < s_.size() && s_[pos_] != '}') {
        PHILORA_ASSIGN_OR_RETURN(max, integer());
      }
      skip_space(false);
    }
    if (pos_ >= s_.size() || s_[pos_] != '}') return error("expected '}' to close a repetition");
    ++pos_;
    if (max >= 0 && max < min) return error("repetition {m,n} with n < m");
    return Expr::repeat(std::move(item), min, max);
  }

  Expected<int> integer() {
    const size_t start = pos_;
    long v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      v = v * 10 + (s_[pos_] - '0');
      if (v > kMaxRepeat) return error(fmt::format("repetition count above {}", kMaxRepeat));
      ++pos_;
    }
    if (pos_ == start) return error("expected a number in a repetition");
    return static_cast<int>(v);
  }

  // One (possibly escaped) character of a literal or class, as a code point.
  Expected<uint32_t> character() {
    if (pos_ >= s_.size()) return error("unexpected end of grammar");
    const auto b0 = static_cast<uint8_t>(s_[pos_]);
    if (b0 == '\\') {
      ++pos_;
      if (pos_ >= s_.size()) return error("unexpected end of grammar after '\\'");
      const char e = s_[pos_++];
      auto hex = [&](int digits) -> Expected<uint32_t> {
        uint32_t v = 0;
        for (int k = 0; k < digits; ++k) {
          if (pos_ >= s_.size()) return error("incomplete hex escape");
          const char h = s_[pos_++];
          int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
          if (d < 0) return error("invalid hex digit in escape");
          v = v * 16 + static_cast<uint32_t>(d);
        }
        if (v > kMaxCodePoint) return error("escape beyond U+10FFFF");
        return v;
      };
      switch (e) {
        case 'x': return hex(2);
        case 'u': return hex(4);
        case 'U': return hex(8);
        case 't': return uint32_t{'\t'};
        case 'n': return uint32_t{'\n'};
        case 'r': return uint32_t{'\r'};
        case '\\': case '"': case '[': case ']': case '-': case '\'': case '^':
          return static_cast<uint32_t>(e);
        default:
          --pos_;
          return error(fmt::format("unknown escape '\\{}'", e));
      }
    }
    const int n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (n == 0 || pos_ + n > s_.size()) return error("the grammar is not valid UTF-8");
    uint32_t cp = n == 1 ? b0 : (b0 & (0x7F >> n));
    for (int k = 1; k < n; ++k) {
      const auto b = static_cast<uint8_t>(s_[pos_ + k]);
      if ((b & 0xC0) != 0x80) return error("the grammar is not valid UTF-8");
      cp = (cp << 6) | (b & 0x3F);
    }
    pos_ += n;
    return cp;
  }

  Expected<Expr> literal() {
    ++pos_;  // "
    std::string bytes;
    for (;;) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') return error("unterminated string literal");
      if (s_[pos_] == '"') {
        ++pos_;
        break;
      }
      PHILORA_ASSIGN_OR_RETURN(uint32_t cp, character());
      tokenizer::unicode::append_utf8(bytes, cp);
    }
    return Expr::lit(std::move(bytes));
  }

  Expected<Expr> char_class() {
    ++pos_;  // [
    bool negate = false;
    if (pos_ < s_.size() && s_[pos_] == '^') {
      negate = true;
      ++pos_;
    }
    CodePointSet set;
    for (;;) {
      if (pos_ >= s_.size()) return error("unterminated character class");
      if (s_[pos_] == ']') {
        ++pos_;
        break;
      }
      PHILORA_ASSIGN_OR_RETURN(uint32_t lo, character());
      uint32_t hi = lo;
      if (pos_ + 1 < s_.size() && s_[pos_] == '-' && s_[pos_ + 1] != ']') {
        ++pos_;
        PHILORA_ASSIGN_OR_RETURN(hi, character());
        if (hi < lo) return error("character range out of order");
      }
      set.push_back({lo, hi});
    }
    set = normalized(std::move(set));
    return Expr::cls(negate ? complement(set) : set);
  }

  std::string_view s_;
  size_t pos_ = 0;
  Grammar g_;
  std::map<std::string, int> ids_;
  std::vector<uint8_t> defined_;
};

void collect_refs(const Expr& e, std::vector<int>& out) {
  if (e.kind == Expr::Kind::kRule) out.push_back(e.rule);
  for (const Expr& c : e.items) collect_refs(c, out);
}

// Whether d's start reaches an accepting state through its byte edges (when
// `bytes`) and its edges into rules marked in `through`.
bool reaches_accept(const Dfa& d, bool bytes, const std::vector<uint8_t>& through) {
  std::vector<uint8_t> seen(d.num_states(), 0);
  std::vector<int32_t> st = {d.start};
  seen[d.start] = 1;
  auto push = [&](int32_t t) {
    if (t >= 0 && !seen[t]) {
      seen[t] = 1;
      st.push_back(t);
    }
  };
  while (!st.empty()) {
    const int32_t s = st.back();
    st.pop_back();
    if (d.accepting[s]) return true;
    if (bytes)
      for (int b = 0; b < 256; ++b) push(d.step(s, static_cast<uint8_t>(b)));
    for (const RuleEdge& e : d.rules[s])
      if (through[e.rule]) push(e.target);
  }
  return false;
}

// The least set of reachable rules whose DFA reaches acceptance through bytes
// (when `bytes`) and rules of the set: the productive rules (with bytes) or
// the nullable ones (without).
std::vector<uint8_t> rules_reaching_accept(const std::vector<Dfa>& dfas,
                                           const std::vector<uint8_t>& reachable, bool bytes) {
  const size_t n = dfas.size();
  std::vector<uint8_t> in(n, 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r)
      if (reachable[r] && !in[r] && reaches_accept(dfas[r], bytes, in)) {
        in[r] = 1;
        changed = true;
      }
  }
  return in;
}

}  // namespace

Expected<Grammar> parse_gbnf(std::string_view text) { return GbnfParser(text).parse(); }

Expected<std::shared_ptr<const CompiledGrammar>> compile(const Grammar& g,
                                                         const CompileLimits& limits) {
  const int n = static_cast<int>(g.rules.size());
  if (g.root < 0 || g.root >= n) return Status::error("grammar: no root rule");
  // Rules reachable from the root.
  std::vector<uint8_t> reachable(n, 0);
  std::vector<int> stack = {g.root};
  reachable[g.root] = 1;
  while (!stack.empty()) {
    const int r = stack.back();
    stack.pop_back();
    std::vector<int> refs;
    collect_refs(g.rules[r].body, refs);
    for (int t : refs) {
      if (t < 0 || t >= n) return Status::errorf("grammar: rule '{}' refers to a missing rule", g.rules[r].name);
      if (!reachable[t]) {
        reachable[t] = 1;
        stack.push_back(t);
      }
    }
  }
  // DFAs with every rule assumed able to match; then the rules that really can, and again.
  std::vector<Dfa> dfas(n);
  std::vector<uint8_t> live(n, 1);
  for (int pass = 0; pass < 2; ++pass) {
    for (int r = 0; r < n; ++r) {
      if (!reachable[r]) continue;
      auto d = compile_expr(g.rules[r].body, limits.fsm, live);
      if (!d.ok()) return d.status().with_context("grammar rule '" + g.rules[r].name + "'");
      dfas[r] = std::move(*d);
    }
    // Productive rules: from the start an accepting state is reachable through bytes and
    // rules known to be productive.
    const std::vector<uint8_t> productive = rules_reaching_accept(dfas, reachable, true);
    if (!productive[g.root]) return Status::errorf("grammar: the root rule '{}' can never match", g.rules[g.root].name);
    bool all = true;
    for (int r = 0; r < n; ++r) {
      if (reachable[r] && !productive[r]) all = false;
    }
    if (all) break;
    live = productive;  // second pass drops edges into rules that can never match
  }
  // Nullable rules: an accepting state reachable without bytes.
  const std::vector<uint8_t> nullable = rules_reaching_accept(dfas, reachable, false);
  // One global state space.
  auto cg = std::make_shared<CompiledGrammar>();
  cg->root_rule = g.root;
  cg->rule_start.assign(n, -1);
  cg->rule_nullable = nullable;
  std::vector<int32_t> offset(n, 0);
  int32_t total = 0;
  for (int r = 0; r < n; ++r) {
    cg->rule_names.push_back(g.rules[r].name);
    if (!reachable[r]) continue;
    offset[r] = total;
    total += dfas[r].num_states();
    if (total > limits.max_total_states) {
      return Status::errorf("grammar: more than {} automaton states in all", limits.max_total_states);
    }
  }
  cg->next.assign(static_cast<size_t>(total) * 256, -1);
  cg->accepting.assign(total, 0);
  cg->has_bytes.assign(total, 0);
  cg->rule_of.assign(total, -1);
  cg->edge_begin.assign(total + 1, 0);
  for (int r = 0; r < n; ++r) {
    if (!reachable[r]) continue;
    const Dfa& d = dfas[r];
    cg->rule_start[r] = offset[r] + d.start;
    for (int32_t s = 0; s < d.num_states(); ++s) {
      const int32_t gs = offset[r] + s;
      cg->accepting[gs] = d.accepting[s];
      cg->rule_of[gs] = r;
      for (int b = 0; b < 256; ++b) {
        const int32_t t = d.step(s, static_cast<uint8_t>(b));
        if (t >= 0) {
          cg->next[static_cast<size_t>(gs) * 256 + b] = offset[r] + t;
          cg->has_bytes[gs] = 1;
        }
      }
    }
  }
  for (int r = 0; r < n; ++r) {
    if (!reachable[r]) continue;
    const Dfa& d = dfas[r];
    for (int32_t s = 0; s < d.num_states(); ++s) {
      const int32_t gs = offset[r] + s;
      for (const RuleEdge& e : d.rules[s]) cg->edges.push_back({e.rule, offset[r] + e.target});
      cg->edge_begin[gs + 1] = static_cast<uint32_t>(cg->edges.size());
    }
  }
  // States of unreachable rules do not exist; fill the CSR ends monotonically.
  for (int32_t s = 1; s <= total; ++s) cg->edge_begin[s] = std::max(cg->edge_begin[s], cg->edge_begin[s - 1]);
  return std::shared_ptr<const CompiledGrammar>(std::move(cg));
}

}  // namespace philora::structured
