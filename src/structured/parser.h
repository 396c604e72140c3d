// An Earley parser over bytes for a CompiledGrammar (grammar.h), after XGrammar's and
// llguidance's choice of Earley: it takes any context-free grammar (left recursion,
// ambiguity, empty rules) and its chart is a stack of item sets, one per byte, so undoing
// bytes (rollback, the mask's trie walk) is popping sets.
//
// An item is (DFA state, origin): the state's rule was entered at byte `origin` and has read
// up to here. Per set: scanning moves items over the byte; predicting a rule edge adds the
// rule's start state (and steps over a nullable rule at once, Aycock-Horspool); an item in an
// accepting state completes the items of its origin's set waiting on its rule.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "structured/grammar.h"

namespace philora::structured {

class EarleyParser {
 public:
  explicit EarleyParser(std::shared_ptr<const CompiledGrammar> g);

  // Reads one byte; false (and nothing changes) when the grammar refuses it.
  bool push_byte(uint8_t b);
  // Undoes the last n bytes (n <= num_bytes()).
  void pop_bytes(size_t n);
  size_t num_bytes() const { return set_begin_.size() - 1; }
  // The root rule can end after the bytes read so far.
  bool accepting() const;
  // States of the current set that have byte transitions (sorted, distinct).
  void scanning_states(std::vector<int32_t>& out) const;
  const CompiledGrammar& grammar() const { return *g_; }

 private:
  struct Item {
    int32_t state;
    int32_t origin;  // the byte position the state's rule started at
  };
  void add(size_t set_start, Item it);
  void close(size_t k);  // predictions and completions of set k (the last one)

  std::shared_ptr<const CompiledGrammar> g_;
  std::vector<Item> items_;         // every set's items, set after set
  std::vector<uint32_t> set_begin_; // [num_sets]: where each set starts in items_
};

}  // namespace philora::structured
