// Context-free grammars over bytes and their compiled form.
//
// A Grammar is a list of rules, each an Expr (expr.h) that may refer to rules. It comes from
// GBNF text (llama.cpp's dialect, parse_gbnf below and docs/STRUCTURED.md), from a JSON
// Schema (json_schema.h), from a regex or from a list of strings. compile() turns every rule
// into a minimized DFA over bytes whose edges may also step over a whole rule; the Earley
// parser (parser.h) runs those DFAs, so a rule's regular parts cost one table lookup a byte and
// only the rule edges (recursion, shared definitions) need the chart.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "structured/expr.h"
#include "structured/fsm.h"

namespace philora::structured {

struct Grammar {
  struct Rule {
    std::string name;
    Expr body;
  };
  std::vector<Rule> rules;  // [num_rules]
  int root = 0;

  // Adds a rule (body empty for now) and returns its id.
  int add_rule(std::string name) {
    rules.push_back({std::move(name), Expr::empty()});
    return static_cast<int>(rules.size() - 1);
  }
};

// llama.cpp's GBNF: `name ::= body` rules, the start rule named "root".
Expected<Grammar> parse_gbnf(std::string_view text);

struct CompileLimits {
  FsmLimits fsm;
  int max_total_states = 200000;  // all rules' DFA states together
};

// All rules' DFAs laid out in one state space: state ids are global.
struct CompiledGrammar {
  int32_t root_rule = 0;
  std::vector<int32_t> next;             // [num_states * 256]: byte transitions, -1 none
  std::vector<uint8_t> accepting;        // [num_states]: the state's rule may end here
  std::vector<uint8_t> has_bytes;        // [num_states]: some byte transition exists
  std::vector<int32_t> rule_of;          // [num_states]
  std::vector<uint32_t> edge_begin;      // [num_states + 1]: CSR into `edges`
  std::vector<RuleEdge> edges;           // rule edges of every state
  std::vector<int32_t> rule_start;       // [num_rules]
  std::vector<uint8_t> rule_nullable;    // [num_rules]
  std::vector<std::string> rule_names;   // [num_rules]

  int32_t num_states() const { return static_cast<int32_t>(accepting.size()); }
  int32_t step(int32_t s, uint8_t b) const { return next[static_cast<size_t>(s) * 256 + b]; }
};

// Compiles every rule reachable from the root. Rules that can match nothing are dropped (with
// the edges to them); a root that matches nothing is an error.
Expected<std::shared_ptr<const CompiledGrammar>> compile(const Grammar& g,
                                                         const CompileLimits& limits = {});

}  // namespace philora::structured
