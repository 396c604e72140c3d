// Byte automata: an Expr compiles to an NFA over bytes (code point classes become their UTF-8
// byte sequences) whose edges may also name grammar rules, which is then determinized
// (subset construction, bounded by a state limit), trimmed of states that cannot reach an
// accepting state, and minimized (Moore's partition refinement). A regex's DFA has only byte
// edges; a grammar rule's DFA may also step over a whole rule (the Earley parser's job).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "structured/expr.h"

namespace philora::structured {

struct FsmLimits {
  int max_nfa_states = 400000;  // NFA size (repetitions are expanded)
  int max_dfa_states = 20000;   // states of one DFA (before minimization)
};

struct RuleEdge {
  int32_t rule = -1;    // the rule stepped over
  int32_t target = -1;  // the state after it
};

// A deterministic automaton over bytes with optional rule edges.
struct Dfa {
  int32_t start = 0;
  std::vector<int32_t> next;                   // [num_states * 256]: next state per byte, -1 none
  std::vector<uint8_t> accepting;              // [num_states]
  std::vector<std::vector<RuleEdge>> rules;    // [num_states]: rule edges (one per rule)

  int32_t num_states() const { return static_cast<int32_t>(accepting.size()); }
  int32_t step(int32_t s, uint8_t b) const { return next[static_cast<size_t>(s) * 256 + b]; }
  // Whole-string match of a rule-free DFA.
  bool matches(std::string_view bytes) const;
};

// Compiles `e` (no anchors left) to a DFA. `rule_live[r]` says whether rule r can match
// anything (edges to other rules are dropped); empty means every rule is live.
Expected<Dfa> compile_expr(const Expr& e, const FsmLimits& limits,
                           const std::vector<uint8_t>& rule_live = {});

}  // namespace philora::structured
