// The one expression tree of src/structured: what a regex parses to, what a GBNF rule body
// parses to and what the JSON Schema compiler builds. Characters are Unicode code points
// (classes of ranges), matched as their UTF-8 byte sequences; literals are raw bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace philora::structured {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;

struct CodePointRange {
  uint32_t lo = 0, hi = 0;  // inclusive
  bool operator==(const CodePointRange&) const = default;
};

// A set of code points: sorted, disjoint, non-adjacent ranges.
using CodePointSet = std::vector<CodePointRange>;

CodePointSet normalized(CodePointSet s);                       // sorts and merges
CodePointSet complement(const CodePointSet& s);                // within [0, 0x10FFFF]
CodePointSet intersect(const CodePointSet& a, const CodePointSet& b);
CodePointSet subtract(const CodePointSet& a, const CodePointSet& b);

struct Expr {
  enum class Kind : uint8_t {
    kEmpty,        // matches ""
    kClass,        // one code point of `set` (an empty set matches nothing)
    kLiteral,      // the bytes of `bytes`
    kSeq,          // items in order
    kAlt,          // any one of items
    kRepeat,       // items[0] repeated min..max times (max -1: unbounded)
    kRule,         // the grammar rule `rule` (only in grammars)
    kAnchorStart,  // ^ (only straight out of the regex parser)
    kAnchorEnd,    // $
  };
  Kind kind = Kind::kEmpty;
  CodePointSet set;         // kClass
  std::string bytes;        // kLiteral
  std::vector<Expr> items;  // kSeq, kAlt: the parts; kRepeat: one
  int min = 0, max = -1;    // kRepeat
  int rule = -1;            // kRule

  static Expr empty() { return Expr{}; }
  static Expr cls(CodePointSet s) {
    Expr e;
    e.kind = Kind::kClass;
    e.set = normalized(std::move(s));
    return e;
  }
  static Expr ch(uint32_t cp) { return cls({{cp, cp}}); }
  static Expr lit(std::string b) {
    Expr e;
    e.kind = Kind::kLiteral;
    e.bytes = std::move(b);
    return e;
  }
  static Expr seq(std::vector<Expr> items) {
    Expr e;
    e.kind = Kind::kSeq;
    e.items = std::move(items);
    return e;
  }
  static Expr alt(std::vector<Expr> items) {
    Expr e;
    e.kind = Kind::kAlt;
    e.items = std::move(items);
    return e;
  }
  static Expr repeat(Expr x, int min, int max) {
    Expr e;
    e.kind = Kind::kRepeat;
    e.items.push_back(std::move(x));
    e.min = min;
    e.max = max;
    return e;
  }
  static Expr opt(Expr x) { return repeat(std::move(x), 0, 1); }
  static Expr star(Expr x) { return repeat(std::move(x), 0, -1); }
  static Expr ref(int rule) {
    Expr e;
    e.kind = Kind::kRule;
    e.rule = rule;
    return e;
  }
};

// Number of nodes of the tree (sizes what inlining an expression costs).
size_t expr_size(const Expr& e);
// Every class of `e` intersected with `allowed` (literals are left as they are).
Expr restrict_classes(const Expr& e, const CodePointSet& allowed);

}  // namespace philora::structured
