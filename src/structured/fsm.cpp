#include "structured/fsm.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "tokenizer/unicode.h"

namespace philora::structured {

// ---- code point sets ------------------------------------------------------------------------

CodePointSet normalized(CodePointSet s) {
  std::sort(s.begin(), s.end(),
            [](const CodePointRange& a, const CodePointRange& b) { return a.lo < b.lo; });
  CodePointSet out;
  for (const CodePointRange& r : s) {
    if (r.lo > r.hi) continue;
    if (!out.empty() && r.lo <= out.back().hi + 1) {
      out.back().hi = std::max(out.back().hi, r.hi);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

CodePointSet complement(const CodePointSet& s) {
  CodePointSet out;
  uint32_t next = 0;
  for (const CodePointRange& r : s) {
    if (r.lo > next) out.push_back({next, r.lo - 1});
    next = r.hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return out;
}

CodePointSet intersect(const CodePointSet& a, const CodePointSet& b) {
  CodePointSet out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const uint32_t lo = std::max(a[i].lo, b[j].lo), hi = std::min(a[i].hi, b[j].hi);
    if (lo <= hi) out.push_back({lo, hi});
    if (a[i].hi < b[j].hi) {
      ++i;
    } else {
      ++j;
    }
  }
  return out;
}

CodePointSet subtract(const CodePointSet& a, const CodePointSet& b) {
  return intersect(a, complement(b));
}

size_t expr_size(const Expr& e) {
  size_t n = 1;
  for (const Expr& c : e.items) n += expr_size(c);
  return n;
}

Expr restrict_classes(const Expr& e, const CodePointSet& allowed) {
  Expr out = e;
  if (e.kind == Expr::Kind::kClass) out.set = intersect(e.set, allowed);
  for (Expr& c : out.items) c = restrict_classes(c, allowed);
  return out;
}

namespace {

// ---- UTF-8 byte sequences of a code point range ---------------------------------------------

struct ByteRange {
  uint8_t lo, hi;
};
using ByteSeq = std::vector<ByteRange>;


// Splits [lo, hi] (same encoded length, no surrogates) into ranges whose UTF-8 encodings are
// products of byte ranges, appending those products.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  static constexpr uint32_t kLengthEnds[] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  for (uint32_t end : kLengthEnds) {  // one encoded length at a time
    const uint32_t start = end == 0x7F ? 0 : (end == 0x7FF ? 0x80 : (end == 0xFFFF ? 0x800 : 0x10000));
    if (hi < start || lo > end) continue;
    if (lo < start || hi > end) {
      utf8_sequences(std::max(lo, start), std::min(hi, end), out);
      continue;
    }
    const std::string a = tokenizer::unicode::to_utf8(lo), b = tokenizer::unicode::to_utf8(hi);
    const int n = static_cast<int>(a.size());
    for (int i = 1; i < n; ++i) {  // split until every continuation byte spans its full range
      const uint32_t m = (1u << (6 * i)) - 1;
      if ((lo & ~m) != (hi & ~m)) {
        if ((lo & m) != 0) {
          utf8_sequences(lo, lo | m, out);
          utf8_sequences((lo | m) + 1, hi, out);
          return;
        }
        if ((hi & m) != m) {
          utf8_sequences(lo, (hi & ~m) - 1, out);
          utf8_sequences(hi & ~m, hi, out);
          return;
        }
      }
    }
    ByteSeq seq;
    for (int i = 0; i < n; ++i) {
      seq.push_back({static_cast<uint8_t>(a[i]), static_cast<uint8_t>(b[i])});
    }
    out.push_back(std::move(seq));
    return;
  }
}

// ---- NFA --------------------------------------------------------------------------------------

struct NfaState {
  std::vector<int32_t> eps;
  struct Edge {
    uint8_t lo, hi;
    int32_t target;
  };
  std::vector<Edge> bytes;
  std::vector<RuleEdge> rules;
};

class NfaBuilder {
 public:
  explicit NfaBuilder(const FsmLimits& limits) : limits_(limits) {}

  Expected<int32_t> new_state() {
    if (static_cast<int>(states_.size()) >= limits_.max_nfa_states) {
      return Status::errorf("the automaton needs more than {} NFA states (repetition counts too "
                            "large or the expression too big)",
                            limits_.max_nfa_states);
    }
    states_.emplace_back();
    return static_cast<int32_t>(states_.size() - 1);
  }

  Status add(const Expr& e, int32_t from, int32_t to) {
    using K = Expr::Kind;
    switch (e.kind) {
      case K::kEmpty:
        states_[from].eps.push_back(to);
        return Status();
      case K::kClass: {
        const CodePointSet set = subtract(e.set, {{0xD800, 0xDFFF}});  // not encodable in UTF-8
        for (const CodePointRange& r : set) {
          std::vector<ByteSeq> seqs;
          utf8_sequences(r.lo, r.hi, seqs);
          for (const ByteSeq& seq : seqs) {
            int32_t cur = from;
            for (size_t i = 0; i < seq.size(); ++i) {
              int32_t nxt = to;
              if (i + 1 < seq.size()) {
                PHILORA_ASSIGN_OR_RETURN(nxt, new_state());
              }
              states_[cur].bytes.push_back({seq[i].lo, seq[i].hi, nxt});
              cur = nxt;
            }
          }
        }
        return Status();
      }
      case K::kLiteral: {
        int32_t cur = from;
        if (e.bytes.empty()) {
          states_[from].eps.push_back(to);
          return Status();
        }
        for (size_t i = 0; i < e.bytes.size(); ++i) {
          int32_t nxt = to;
          if (i + 1 < e.bytes.size()) {
            PHILORA_ASSIGN_OR_RETURN(nxt, new_state());
          }
          const auto b = static_cast<uint8_t>(e.bytes[i]);
          states_[cur].bytes.push_back({b, b, nxt});
          cur = nxt;
        }
        return Status();
      }
      case K::kSeq: {
        int32_t cur = from;
        for (size_t i = 0; i < e.items.size(); ++i) {
          int32_t nxt = to;
          if (i + 1 < e.items.size()) {
            PHILORA_ASSIGN_OR_RETURN(nxt, new_state());
          }
          PHILORA_RETURN_IF_ERROR(add(e.items[i], cur, nxt));
          cur = nxt;
        }
        if (e.items.empty()) states_[from].eps.push_back(to);
        return Status();
      }
      case K::kAlt:
        // An empty alternation matches nothing: no edge at all.
        for (const Expr& c : e.items) {
          // Each alternative gets its own entry state so that loops inside one cannot leak
          // into another through the shared `from`.
          PHILORA_ASSIGN_OR_RETURN(int32_t in, new_state());
          states_[from].eps.push_back(in);
          PHILORA_RETURN_IF_ERROR(add(c, in, to));
        }
        return Status();
      case K::kRepeat: {
        const Expr& c = e.items[0];
        int32_t cur = from;
        for (int i = 0; i < e.min; ++i) {
          PHILORA_ASSIGN_OR_RETURN(int32_t nxt, new_state());
          PHILORA_RETURN_IF_ERROR(add(c, cur, nxt));
          cur = nxt;
        }
        if (e.max < 0) {
          PHILORA_ASSIGN_OR_RETURN(int32_t loop, new_state());
          PHILORA_ASSIGN_OR_RETURN(int32_t back, new_state());
          states_[cur].eps.push_back(loop);
          PHILORA_RETURN_IF_ERROR(add(c, loop, back));
          states_[back].eps.push_back(loop);
          states_[loop].eps.push_back(to);
          return Status();
        }
        for (int i = e.min; i < e.max; ++i) {
          states_[cur].eps.push_back(to);
          PHILORA_ASSIGN_OR_RETURN(int32_t nxt, new_state());
          PHILORA_RETURN_IF_ERROR(add(c, cur, nxt));
          cur = nxt;
        }
        states_[cur].eps.push_back(to);
        return Status();
      }
      case K::kRule:
        states_[from].rules.push_back({e.rule, to});
        return Status();
      case K::kAnchorStart:
      case K::kAnchorEnd:
        return Status::error("anchors ^ and $ are supported only at the start and end of a pattern");
    }
    return Status::error("unknown expression kind");
  }

  std::vector<NfaState>& states() { return states_; }

 private:
  const FsmLimits& limits_;
  std::vector<NfaState> states_;
};

struct VecHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    size_t h = 1469598103934665603ull;
    for (int32_t x : v) h = (h ^ static_cast<size_t>(x)) * 1099511628211ull;
    return h;
  }
};

// Subset construction from the NFA's `start` to its `accept`.
Expected<Dfa> determinize(const std::vector<NfaState>& nfa, int32_t start, int32_t accept,
                          const FsmLimits& limits, const std::vector<uint8_t>& rule_live) {
  std::vector<uint32_t> mark(nfa.size(), 0);
  uint32_t stamp = 0;
  auto closure = [&](std::vector<int32_t> set) {
    ++stamp;
    std::vector<int32_t> stack = set;
    set.clear();
    for (int32_t s : stack) mark[s] = stamp;
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      set.push_back(s);
      for (int32_t t : nfa[s].eps) {
        if (mark[t] != stamp) {
          mark[t] = stamp;
          stack.push_back(t);
        }
      }
    }
    std::sort(set.begin(), set.end());
    return set;
  };

  Dfa dfa;
  std::unordered_map<std::vector<int32_t>, int32_t, VecHash> ids;
  std::vector<std::vector<int32_t>> sets;
  auto intern = [&](std::vector<int32_t> set) -> Expected<int32_t> {
    auto it = ids.find(set);
    if (it != ids.end()) return it->second;
    if (static_cast<int>(sets.size()) >= limits.max_dfa_states) {
      return Status::errorf("the automaton needs more than {} DFA states", limits.max_dfa_states);
    }
    const auto id = static_cast<int32_t>(sets.size());
    ids.emplace(set, id);
    sets.push_back(std::move(set));
    dfa.next.resize(sets.size() * 256, -1);
    dfa.accepting.push_back(0);
    dfa.rules.emplace_back();
    return id;
  };
  PHILORA_ASSIGN_OR_RETURN(dfa.start, intern(closure({start})));

  for (size_t d = 0; d < sets.size(); ++d) {
    const std::vector<int32_t> set = sets[d];
    // Byte edges: cut 0..255 at every edge's ends, then the targets per piece.
    std::vector<int> cuts = {0, 256};
    std::map<int32_t, std::vector<int32_t>> by_rule;
    bool acc = false;
    for (int32_t s : set) {
      if (s == accept) acc = true;
      for (const NfaState::Edge& e : nfa[s].bytes) {
        cuts.push_back(e.lo);
        cuts.push_back(e.hi + 1);
      }
      for (const RuleEdge& r : nfa[s].rules) {
        if (rule_live.empty() || rule_live[r.rule]) by_rule[r.rule].push_back(r.target);
      }
    }
    dfa.accepting[d] = acc;
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      const int lo = cuts[k], hi = cuts[k + 1] - 1;
      std::vector<int32_t> targets;
      for (int32_t s : set) {
        for (const NfaState::Edge& e : nfa[s].bytes) {
          if (e.lo <= lo && hi <= e.hi) targets.push_back(e.target);
        }
      }
      if (targets.empty()) continue;
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
      PHILORA_ASSIGN_OR_RETURN(int32_t t, intern(closure(std::move(targets))));
      for (int b = lo; b <= hi; ++b) dfa.next[d * 256 + b] = t;
    }
    for (auto& [rule, targets] : by_rule) {
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
      PHILORA_ASSIGN_OR_RETURN(int32_t t, intern(closure(targets)));
      dfa.rules[d].push_back({rule, t});
    }
  }
  return dfa;
}

// Drops states that cannot reach an accepting state and those not reachable from the start,
// then merges equivalent states (Moore). The start keeps existing even when nothing is accepted.
Dfa trim_and_minimize(const Dfa& in) {
  const int32_t n = in.num_states();
  // Co-reachability (backwards from accepting states).
  std::vector<std::vector<int32_t>> preds(n);
  for (int32_t s = 0; s < n; ++s) {
    for (int b = 0; b < 256; ++b) {
      const int32_t t = in.step(s, static_cast<uint8_t>(b));
      if (t >= 0 && (preds[t].empty() || preds[t].back() != s)) preds[t].push_back(s);
    }
    for (const RuleEdge& r : in.rules[s]) preds[r.target].push_back(s);
  }
  std::vector<uint8_t> live(n, 0);
  std::vector<int32_t> stack;
  for (int32_t s = 0; s < n; ++s) {
    if (in.accepting[s]) {
      live[s] = 1;
      stack.push_back(s);
    }
  }
  while (!stack.empty()) {
    const int32_t s = stack.back();
    stack.pop_back();
    for (int32_t p : preds[s]) {
      if (!live[p]) {
        live[p] = 1;
        stack.push_back(p);
      }
    }
  }
  // Moore refinement over live states; dead targets are class -1.
  std::vector<int32_t> cls(n, -1);
  for (int32_t s = 0; s < n; ++s) {
    if (live[s]) cls[s] = in.accepting[s] ? 1 : 0;
  }
  // Byte classes: bytes that every state treats alike are compared once.
  std::vector<int> rep_bytes;
  {
    std::map<std::vector<int32_t>, int> seen;
    for (int b = 0; b < 256; ++b) {
      std::vector<int32_t> col(n);
      for (int32_t s = 0; s < n; ++s) col[s] = in.step(s, static_cast<uint8_t>(b));
      if (seen.emplace(std::move(col), b).second) rep_bytes.push_back(b);
    }
  }
  int32_t num_classes = 0;
  for (;;) {
    std::map<std::vector<int32_t>, int32_t> sig_ids;
    std::vector<int32_t> next_cls(n, -1);
    for (int32_t s = 0; s < n; ++s) {
      if (!live[s]) continue;
      std::vector<int32_t> sig;
      sig.reserve(rep_bytes.size() + 2 + 2 * in.rules[s].size());
      sig.push_back(cls[s]);
      for (int b : rep_bytes) {
        const int32_t t = in.step(s, static_cast<uint8_t>(b));
        sig.push_back(t >= 0 && live[t] ? cls[t] : -1);
      }
      for (const RuleEdge& r : in.rules[s]) {
        if (!live[r.target]) continue;
        sig.push_back(r.rule);
        sig.push_back(cls[r.target]);
      }
      auto it = sig_ids.emplace(std::move(sig), static_cast<int32_t>(sig_ids.size())).first;
      next_cls[s] = it->second;
    }
    const auto count = static_cast<int32_t>(sig_ids.size());
    cls.swap(next_cls);
    if (count == num_classes) break;
    num_classes = count;
  }
  // Renumber from the start, breadth first, keeping only reachable classes.
  Dfa out;
  std::vector<int32_t> new_id(std::max(num_classes, 1), -1);
  std::vector<int32_t> rep(std::max(num_classes, 1), -1);
  for (int32_t s = 0; s < n; ++s) {
    if (cls[s] >= 0 && rep[cls[s]] < 0) rep[cls[s]] = s;
  }
  std::vector<int32_t> order;
  auto visit = [&](int32_t c) {
    if (new_id[c] < 0) {
      new_id[c] = static_cast<int32_t>(order.size());
      order.push_back(c);
    }
    return new_id[c];
  };
  if (!live[in.start]) {  // accepts nothing: a lone start state
    out.start = 0;
    out.next.assign(256, -1);
    out.accepting.push_back(0);
    out.rules.emplace_back();
    return out;
  }
  visit(cls[in.start]);
  for (size_t i = 0; i < order.size(); ++i) {
    const int32_t s = rep[order[i]];
    out.next.resize((i + 1) * 256, -1);
    out.accepting.push_back(in.accepting[s]);
    out.rules.emplace_back();
    for (int b = 0; b < 256; ++b) {
      const int32_t t = in.step(s, static_cast<uint8_t>(b));
      if (t >= 0 && live[t]) out.next[i * 256 + b] = visit(cls[t]);
    }
    for (const RuleEdge& r : in.rules[s]) {
      if (live[r.target]) out.rules[i].push_back({r.rule, visit(cls[r.target])});
    }
  }
  out.start = 0;
  return out;
}

}  // namespace

bool Dfa::matches(std::string_view bytes) const {
  int32_t s = start;
  for (char c : bytes) {
    s = step(s, static_cast<uint8_t>(c));
    if (s < 0) return false;
  }
  return accepting[s] != 0;
}

Expected<Dfa> compile_expr(const Expr& e, const FsmLimits& limits,
                           const std::vector<uint8_t>& rule_live) {
  NfaBuilder nfa(limits);
  PHILORA_ASSIGN_OR_RETURN(int32_t start, nfa.new_state());
  PHILORA_ASSIGN_OR_RETURN(int32_t accept, nfa.new_state());
  PHILORA_RETURN_IF_ERROR(nfa.add(e, start, accept));
  PHILORA_ASSIGN_OR_RETURN(Dfa dfa, determinize(nfa.states(), start, accept, limits, rule_live));
  return trim_and_minimize(dfa);
}

}  // namespace philora::structured
