// Token masks for constrained decoding.
//
//   TokenVocabulary     each token id's bytes (tokenizer::Tokenizer::token_bytes), sorted so
//                       that a walk in that order shares prefixes like a trie walk
//   CompiledConstraint  a CompiledGrammar bound to a vocabulary, with a table per DFA state:
//                       tokens that state accepts or refuses on its own (XGrammar's
//                       context-independent tokens) and the few left for the parser; built at
//                       compile time within a TableBudget, the rest by the first mask that
//                       meets their state
//   Matcher             one sequence's parser state: accept_token, fill_mask, is_accepting,
//                       rollback
//   ConstraintCache     compiled constraints by their text (thread-safe, LRU)
//
// A mask is a bitset over token ids: bit (id % 32) of word (id / 32) set = allowed. The stop
// tokens (EOS) are allowed exactly where the constraint accepts.
#pragma once

#include <atomic>
#include <bitset>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "core/threads.h"
#include "structured/grammar.h"
#include "structured/json_schema.h"
#include "structured/parser.h"

namespace philora::tokenizer {
class Tokenizer;
}

namespace philora::structured {

class TokenVocabulary {
 public:
  // `bytes[id]`: the token's bytes, nullopt for a token that adds none (special tokens);
  // `stop_ids`: the tokens that end a generation.
  TokenVocabulary(std::vector<std::optional<std::string>> bytes, std::vector<int32_t> stop_ids);
  static std::shared_ptr<const TokenVocabulary> from_tokenizer(const tokenizer::Tokenizer& tok);

  size_t size() const { return bytes_.size(); }            // ids 0..size()-1
  size_t mask_words() const { return (size() + 31) / 32; }
  const std::optional<std::string>& bytes(int32_t id) const { return bytes_[id]; }
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }
  bool is_stop(int32_t id) const;
  // Ids with non-empty bytes (stop tokens excluded), in byte order, and for each the length of
  // the prefix it shares with the one before.
  const std::vector<int32_t>& sorted() const { return sorted_; }  // [num_byte_tokens]
  const std::vector<uint16_t>& lcp() const { return lcp_; }       // [num_byte_tokens]

 private:
  std::vector<std::optional<std::string>> bytes_;  // [vocab]
  std::vector<int32_t> stop_ids_;
  std::vector<int32_t> sorted_;
  std::vector<uint16_t> lcp_;
};

// Which per-state tables a compilation builds ahead, in parallel on the cache's pool: the
// states reachable from the root, in breadth-first order (those a walk meets first come
// first), while all three limits hold. A state beyond them gets its table from the first mask
// that meets it (then shared), as all did before. In the background (the default), `get`
// returns once the grammar is compiled and a thread of the cache builds the tables meanwhile
// (a mask that meets a state first builds that one itself, or waits for the one building it);
// otherwise `get` returns after them.
struct TableBudget {
  int threads = 0;                        // the cache's pool: 0 = hardware concurrency
  bool background = true;
  int64_t max_states = 4096;              // tables built ahead per constraint
  int64_t max_token_visits = 400000000;   // the number of states times the vocabulary's byte tokens
  int64_t max_bytes = 16ll << 20;         // their accepted sets counted as bitsets (lists are smaller)
};

class CompiledConstraint {
 public:
  CompiledConstraint(std::shared_ptr<const CompiledGrammar> g,
                     std::shared_ptr<const TokenVocabulary> vocab);
  const std::shared_ptr<const CompiledGrammar>& grammar() const { return grammar_; }
  const TokenVocabulary& vocab() const { return *vocab_; }

  // What one DFA state decides alone (built on first use, then shared by every matcher).
  // The accepted tokens are kept as a bitset or, when there are fewer than mask_words / 2 of
  // them (most states outside strings), as a list of ids (XGrammar's adaptive storage).
  struct StateTokens {
    std::vector<uint32_t> accepted;      // [mask_words] or empty: read whole inside the state's rule
    std::vector<int32_t> accepted_ids;   // the same tokens when `accepted` is empty
    std::vector<uint32_t> uncertain;     // positions in vocab().sorted(): the parser decides
  };
  const StateTokens& state_tokens(int32_t state) const;
  // Builds the tables of the budget's states now (pool may be null: this thread alone), until
  // `cancel` (may be null) is set; returns how many states it covered.
  int64_t build_tables(const TableBudget& budget, ThreadPool* pool,
                       const std::atomic<bool>* cancel = nullptr) const;
  int64_t num_tables_built() const { return tables_built_; }
  // Bytes held by the tables built so far (call when no build runs: tests and benchmarks).
  int64_t table_bytes() const;

 private:
  std::shared_ptr<const CompiledGrammar> grammar_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::vector<std::bitset<256>> escape_;  // [num_states]: bytes another rule could read instead
  mutable std::unique_ptr<std::once_flag[]> once_;                    // [num_states]
  mutable std::vector<std::unique_ptr<StateTokens>> state_tokens_;   // [num_states]
  mutable std::atomic<int64_t> tables_built_{0};
};

class Matcher {
 public:
  explicit Matcher(std::shared_ptr<const CompiledConstraint> c);

  // Advances over token `id`; false (and nothing changes) when the constraint refuses it.
  // A stop token is accepted only where the constraint accepts; it ends the matcher.
  bool accept_token(int32_t id);
  // Writes the allowed tokens of the next step; `mask` has at least vocab().mask_words() words.
  void fill_mask(std::span<uint32_t> mask);
  // The text so far is complete (a stop token would be allowed).
  bool is_accepting() const;
  // A stop token was accepted.
  bool is_terminated() const { return terminated_; }
  // Undoes the last k accepted tokens (k <= num_tokens()).
  void rollback(size_t k);
  size_t num_tokens() const { return token_bytes_.size(); }
  const CompiledConstraint& constraint() const { return *c_; }

 private:
  std::shared_ptr<const CompiledConstraint> c_;
  EarleyParser parser_;
  std::vector<uint32_t> token_bytes_;  // [num_tokens]: bytes each accepted token added
  bool terminated_ = false;
  std::vector<int32_t> scratch_states_;
  std::vector<uint32_t> scratch_candidates_;
};

// What a request asks for.
enum class ConstraintKind {
  kJsonSchema,  // text: the schema
  kJsonObject,  // text ignored: any JSON object
  kRegex,       // text: an ECMA-262 pattern the whole output matches
  kGrammar,     // text: GBNF
  kChoice,      // text: a JSON array of strings, the output is one of them
};

// The grammar of a constraint (no vocabulary needed).
Expected<Grammar> constraint_grammar(ConstraintKind kind, std::string_view text,
                                     const JsonOptions& json = {});

// Compiled constraints keyed by (kind, options, text) for one vocabulary; errors are cached
// too. Thread-safe; least recently used entries beyond `capacity` are dropped.
class ConstraintCache {
 public:
  explicit ConstraintCache(std::shared_ptr<const TokenVocabulary> vocab, size_t capacity = 256,
                           CompileLimits limits = {}, TableBudget tables = {});
  ~ConstraintCache();
  ConstraintCache(const ConstraintCache&) = delete;
  ConstraintCache& operator=(const ConstraintCache&) = delete;
  Expected<std::shared_ptr<const CompiledConstraint>> get(ConstraintKind kind,
                                                          std::string_view text,
                                                          const JsonOptions& json = {});
  size_t size() const;
  size_t compilations() const { return compilations_; }
  // Waits until the background table builds queued so far are done (tests and benchmarks).
  void wait_tables();

 private:
  using Entry = Expected<std::shared_ptr<const CompiledConstraint>>;
  std::shared_ptr<const TokenVocabulary> vocab_;
  size_t capacity_;
  CompileLimits limits_;
  void build_loop();

  TableBudget tables_;
  std::unique_ptr<ThreadPool> pool_;
  std::mutex build_mu_;  // guards the queue below; the pool runs one build at a time under it
  std::condition_variable build_cv_;
  std::list<std::weak_ptr<const CompiledConstraint>> build_queue_;
  bool building_ = false;
  std::atomic<bool> stop_{false};
  std::thread builder_;  // background builds (TableBudget::background)
  mutable std::mutex mu_;
  std::list<std::string> lru_;  // most recent first
  std::map<std::string, std::pair<Entry, std::list<std::string>::iterator>> entries_;
  size_t compilations_ = 0;
};

}  // namespace philora::structured
