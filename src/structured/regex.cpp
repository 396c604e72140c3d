#include "structured/regex.h"

#include <optional>

namespace philora::structured {

namespace {

constexpr int kMaxRepeat = 1000;  // larger {m,n} counts are refused
constexpr int kMaxDepth = 200;    // group nesting

// ECMA-262 sets (no `i` flag).
CodePointSet digit_set() { return {{'0', '9'}}; }
CodePointSet word_set() { return normalized({{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}); }
CodePointSet space_set() {
  // WhiteSpace (TAB VT FF SP NBSP ZWNBSP, Zs) and LineTerminator (LF CR LS PS).
  return normalized({{0x09, 0x0D}, {0x20, 0x20}, {0xA0, 0xA0}, {0x1680, 0x1680},
                     {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                     {0x3000, 0x3000}, {0xFEFF, 0xFEFF}});
}
CodePointSet dot_set() { return complement(normalized({{0x0A, 0x0A}, {0x0D, 0x0D}, {0x2028, 0x2029}})); }

bool is_syntax_char(uint32_t c) {
  switch (c) {
    case '^': case '$': case '\\': case '.': case '*': case '+': case '?': case '(': case ')':
    case '[': case ']': case '{': case '}': case '|': case '/':
      return true;
    default:
      return false;
  }
}

int hex_value(uint32_t c) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return static_cast<int>(c - 'A' + 10);
  return -1;
}

class RegexParser {
 public:
  static Expected<RegexParser> make(std::string_view pattern) {
    RegexParser p;
    for (size_t i = 0; i < pattern.size();) {
      const auto b0 = static_cast<uint8_t>(pattern[i]);
      int n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
      if (n == 0 || i + n > pattern.size()) {
        return Status::errorf("regex: the pattern is not valid UTF-8 (at byte {})", i);
      }
      uint32_t cp = n == 1 ? b0 : (b0 & (0x7F >> n));
      for (int k = 1; k < n; ++k) {
        const auto b = static_cast<uint8_t>(pattern[i + k]);
        if ((b & 0xC0) != 0x80) return Status::errorf("regex: the pattern is not valid UTF-8 (at byte {})", i);
        cp = (cp << 6) | (b & 0x3F);
      }
      p.cps_.push_back(cp);
      i += n;
    }
    return p;
  }

  Expected<Expr> parse() {
    PHILORA_ASSIGN_OR_RETURN(Expr e, disjunction(0));
    if (pos_ < cps_.size()) return error("unmatched ')'");
    return e;
  }

 private:
  Status error(const std::string& what) const {
    return Status::errorf("regex: {} at position {}", what, pos_);
  }
  bool at_end() const { return pos_ >= cps_.size(); }
  uint32_t peek(size_t k = 0) const { return pos_ + k < cps_.size() ? cps_[pos_ + k] : 0xFFFFFFFF; }

  Expected<Expr> disjunction(int depth) {
    if (depth > kMaxDepth) return error("groups nested too deeply");
    std::vector<Expr> alts;
    for (;;) {
      PHILORA_ASSIGN_OR_RETURN(Expr a, alternative(depth));
      alts.push_back(std::move(a));
      if (peek() != '|') break;
      ++pos_;
    }
    return alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
  }

  Expected<Expr> alternative(int depth) {
    std::vector<Expr> terms;
    while (!at_end() && peek() != '|' && peek() != ')') {
      PHILORA_ASSIGN_OR_RETURN(Expr t, term(depth));
      terms.push_back(std::move(t));
    }
    return terms.size() == 1 ? std::move(terms[0]) : Expr::seq(std::move(terms));
  }

  Expected<Expr> term(int depth) {
    const uint32_t c = peek();
    if (c == '^' || c == '$') {
      ++pos_;
      if (is_quantifier_start()) return error("nothing to repeat (a quantifier after an anchor)");
      Expr e;
      e.kind = c == '^' ? Expr::Kind::kAnchorStart : Expr::Kind::kAnchorEnd;
      return e;
    }
    if (c == '\\' && (peek(1) == 'b' || peek(1) == 'B')) {
      return error("word boundary assertions (\\b, \\B) are not supported");
    }
    PHILORA_ASSIGN_OR_RETURN(Expr atom_e, atom(depth));
    if (!is_quantifier_start()) return atom_e;
    int min = 0, max = -1;
    const uint32_t q = peek();
    if (q == '*') {
      ++pos_;
    } else if (q == '+') {
      min = 1;
      ++pos_;
    } else if (q == '?') {
      max = 1;
      ++pos_;
    } else {  // {m}, {m,}, {m,n}
      ++pos_;
      PHILORA_ASSIGN_OR_RETURN(min, number());
      max = min;
      if (peek() == ',') {
        ++pos_;
        max = -1;
        if (peek() != '}') {
          PHILORA_ASSIGN_OR_RETURN(max, number());
        }
      }
      if (peek() != '}') return error("incomplete quantifier '{'");
      ++pos_;
      if (max >= 0 && max < min) return error("numbers out of order in {} quantifier");
    }
    if (peek() == '?') ++pos_;  // lazy: the same language
    if (is_quantifier_start()) return error("nothing to repeat (two quantifiers in a row)");
    return Expr::repeat(std::move(atom_e), min, max);
  }

  bool is_quantifier_start() const {
    const uint32_t c = peek();
    return c == '*' || c == '+' || c == '?' || c == '{';
  }

  Expected<int> number() {
    if (!(peek() >= '0' && peek() <= '9')) return error("incomplete quantifier '{'");
    long v = 0;
    while (peek() >= '0' && peek() <= '9') {
      v = v * 10 + static_cast<long>(peek() - '0');
      if (v > kMaxRepeat) return error(fmt::format("repetition count above {} is not supported", kMaxRepeat));
      ++pos_;
    }
    return static_cast<int>(v);
  }

  Expected<Expr> atom(int depth) {
    const uint32_t c = peek();
    switch (c) {
      case '.':
        ++pos_;
        return Expr::cls(dot_set());
      case '[':
        return char_class();
      case '(':
        return group(depth);
      case '\\': {
        ++pos_;
        PHILORA_ASSIGN_OR_RETURN(CodePointSet s, escape(/*in_class=*/false));
        return Expr::cls(std::move(s));
      }
      case ')':
        return error("unmatched ')'");
      case '*': case '+': case '?':
        return error("nothing to repeat");
      case '{':
        return error("lone '{' (a syntax error with the u flag; write \\{)");
      case '}':
        return error("lone '}' (a syntax error with the u flag; write \\})");
      case ']':
        return error("lone ']' (a syntax error with the u flag; write \\])");
      default:
        ++pos_;
        return Expr::ch(c);
    }
  }

  Expected<Expr> group(int depth) {
    ++pos_;  // (
    if (peek() == '?') {
      if (peek(1) == '=' || peek(1) == '!') return error("lookahead assertions ((?=, (?!) are not supported");
      if (peek(1) == '<' && (peek(2) == '=' || peek(2) == '!')) {
        return error("lookbehind assertions ((?<=, (?<!) are not supported");
      }
      if (peek(1) == ':') {
        pos_ += 2;
      } else if (peek(1) == '<') {
        pos_ += 2;
        size_t n = 0;
        while (!at_end() && peek() != '>') {
          const uint32_t ch = peek();
          const bool ok = ch == '_' || ch == '$' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                          (n > 0 && ch >= '0' && ch <= '9') || ch > 0x7F;
          if (!ok) return error("invalid capture group name");
          ++pos_;
          ++n;
        }
        if (at_end() || n == 0) return error("invalid capture group name");
        ++pos_;
      } else {
        return error("invalid group '(?'");
      }
    }
    PHILORA_ASSIGN_OR_RETURN(Expr inner, disjunction(depth + 1));
    if (peek() != ')') return error("missing ')'");
    ++pos_;
    return inner;
  }

  // After a backslash. In a class, \b is backspace and \- a hyphen.
  Expected<CodePointSet> escape(bool in_class) {
    if (at_end()) return error("\\ at end of pattern");
    const uint32_t c = peek();
    ++pos_;
    auto one = [](uint32_t cp) { return CodePointSet{{cp, cp}}; };
    switch (c) {
      case 'd': return digit_set();
      case 'D': return complement(digit_set());
      case 'w': return word_set();
      case 'W': return complement(word_set());
      case 's': return space_set();
      case 'S': return complement(space_set());
      case 't': return one(0x09);
      case 'n': return one(0x0A);
      case 'v': return one(0x0B);
      case 'f': return one(0x0C);
      case 'r': return one(0x0D);
      case 'p': case 'P':
        return error("Unicode property escapes (\\p{...}, \\P{...}) are not supported");
      case 'k':
        return error("backreferences (\\k<name>) are not supported");
      case 'b':
        if (in_class) return one(0x08);
        return error("word boundary assertions (\\b, \\B) are not supported");
      case 'B':
        return error(in_class ? "invalid escape \\B in a class" : "word boundary assertions (\\b, \\B) are not supported");
      case '-':
        if (in_class) return one('-');
        return error("invalid escape \\- outside a class (u flag)");
      case 'c': {
        const uint32_t l = peek();
        if ((l >= 'a' && l <= 'z') || (l >= 'A' && l <= 'Z')) {
          ++pos_;
          return one(l % 32);
        }
        return error("invalid escape \\c");
      }
      case '0':
        if (peek() >= '0' && peek() <= '9') return error("invalid escape \\0 followed by a digit (u flag)");
        return one(0);
      case 'x': {
        const int h = hex_value(peek()), l = hex_value(peek(1));
        if (h < 0 || l < 0) return error("invalid escape \\x (two hex digits needed)");
        pos_ += 2;
        return one(static_cast<uint32_t>(h * 16 + l));
      }
      case 'u': {
        PHILORA_ASSIGN_OR_RETURN(uint32_t cp, unicode_escape());
        return one(cp);
      }
      default:
        break;
    }
    if (c >= '1' && c <= '9') {
      return error(in_class ? "invalid escape (a backreference-like \\digit in a class)"
                            : "backreferences (\\1 ... \\9) are not supported");
    }
    if (is_syntax_char(c)) return one(c);
    return error(fmt::format("invalid escape \\{} (u flag: only syntax characters may be escaped)",
                             c < 0x80 ? std::string(1, static_cast<char>(c)) : std::string("U+") + fmt::format("{:04X}", c)));
  }

  // After "\u": HHHH (a surrogate pair of two such escapes joins) or {H...}.
  Expected<uint32_t> unicode_escape() {
    if (peek() == '{') {
      ++pos_;
      uint32_t v = 0;
      int n = 0;
      while (hex_value(peek()) >= 0) {
        v = v * 16 + static_cast<uint32_t>(hex_value(peek()));
        if (v > kMaxCodePoint) return error("\\u{...} beyond U+10FFFF");
        ++pos_;
        ++n;
      }
      if (n == 0 || peek() != '}') return error("invalid escape \\u{...}");
      ++pos_;
      return v;
    }
    auto hex4 = [&](size_t at) -> int {
      int v = 0;
      for (size_t k = 0; k < 4; ++k) {
        const int h = hex_value(peek(at + k));
        if (h < 0) return -1;
        v = v * 16 + h;
      }
      return v;
    };
    const int v = hex4(0);
    if (v < 0) return error("invalid escape \\u (four hex digits needed)");
    pos_ += 4;
    if (v >= 0xD800 && v <= 0xDBFF && peek() == '\\' && peek(1) == 'u') {
      const int lo = hex4(2);
      if (lo >= 0xDC00 && lo <= 0xDFFF) {
        pos_ += 6;
        return static_cast<uint32_t>(0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00));
      }
    }
    return static_cast<uint32_t>(v);
  }

  // One class atom: a single code point (range end) or a set (\d etc.).
  struct ClassAtom {
    CodePointSet set;
    bool single = false;
  };
  Expected<ClassAtom> class_atom() {
    const uint32_t c = peek();
    if (c == '\\') {
      ++pos_;
      const uint32_t e = peek();
      PHILORA_ASSIGN_OR_RETURN(CodePointSet s, escape(/*in_class=*/true));
      const bool set_escape = e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 's' || e == 'S';
      return ClassAtom{std::move(s), !set_escape};
    }
    ++pos_;
    return ClassAtom{{{c, c}}, true};
  }

  Expected<Expr> char_class() {
    ++pos_;  // [
    bool negate = false;
    if (peek() == '^') {
      negate = true;
      ++pos_;
    }
    CodePointSet set;
    for (;;) {
      if (at_end()) return error("missing ']'");
      if (peek() == ']') {
        ++pos_;
        break;
      }
      PHILORA_ASSIGN_OR_RETURN(ClassAtom a, class_atom());
      if (peek() == '-' && peek(1) != ']' && pos_ + 1 < cps_.size()) {
        ++pos_;  // -
        PHILORA_ASSIGN_OR_RETURN(ClassAtom b, class_atom());
        if (!a.single || !b.single) return error("a class escape (\\d, \\w, \\s...) cannot bound a range (u flag)");
        if (a.set[0].lo > b.set[0].lo) return error("range out of order in character class");
        set.push_back({a.set[0].lo, b.set[0].lo});
      } else {
        set.insert(set.end(), a.set.begin(), a.set.end());
      }
    }
    set = normalized(std::move(set));
    return Expr::cls(negate ? complement(set) : set);
  }

  std::vector<uint32_t> cps_;
  size_t pos_ = 0;
};

bool is_anchor(const Expr& e, Expr::Kind k) { return e.kind == k; }

}  // namespace

Expected<Expr> parse_regex(std::string_view pattern) {
  PHILORA_ASSIGN_OR_RETURN(RegexParser p, RegexParser::make(pattern));
  return p.parse();
}

Expected<Expr> regex_expr(std::string_view pattern, RegexMatch mode, const CodePointSet& allowed) {
  PHILORA_ASSIGN_OR_RETURN(Expr top, parse_regex(pattern));
  std::vector<Expr> alts;
  if (top.kind == Expr::Kind::kAlt) {
    alts = std::move(top.items);
  } else {
    alts.push_back(std::move(top));
  }
  const Expr any = Expr::star(Expr::cls({{0, kMaxCodePoint}}));
  for (Expr& a : alts) {
    std::vector<Expr> items;
    if (a.kind == Expr::Kind::kSeq) {
      items = std::move(a.items);
    } else {
      items.push_back(std::move(a));
    }
    bool start = false, end = false;
    while (!items.empty() && is_anchor(items.front(), Expr::Kind::kAnchorStart)) {
      start = true;
      items.erase(items.begin());
    }
    while (!items.empty() && is_anchor(items.back(), Expr::Kind::kAnchorEnd)) {
      end = true;
      items.pop_back();
    }
    if (mode == RegexMatch::kSearch) {
      if (!start) items.insert(items.begin(), any);
      if (!end) items.push_back(any);
    }
    a = Expr::seq(std::move(items));
  }
  Expr e = alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
  return restrict_classes(e, allowed);
}

Expected<Dfa> compile_regex(std::string_view pattern, RegexMatch mode, const FsmLimits& limits) {
  PHILORA_ASSIGN_OR_RETURN(Expr e, regex_expr(pattern, mode));
  auto dfa = compile_expr(e, limits);
  if (!dfa.ok()) return dfa.status().with_context(fmt::format("regex {:?}", pattern));
  return dfa;
}

}  // namespace philora::structured
