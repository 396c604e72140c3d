#include "structured/matcher.h"

#include <algorithm>
#include <bit>

#include <nlohmann/json.hpp>

#include "structured/regex.h"
#include "tokenizer/tokenizer.h"

namespace philora::structured {

// ---- vocabulary -------------------------------------------------------------------------------

TokenVocabulary::TokenVocabulary(std::vector<std::optional<std::string>> bytes, std::vector<int32_t> stop_ids)
    : bytes_(std::move(bytes)), stop_ids_(std::move(stop_ids)) {
  std::sort(stop_ids_.begin(), stop_ids_.end());
  stop_ids_.erase(std::unique(stop_ids_.begin(), stop_ids_.end()), stop_ids_.end());
  for (int32_t id = 0; id < static_cast<int32_t>(bytes_.size()); ++id) {
    if (bytes_[id] && !bytes_[id]->empty() && !is_stop(id)) sorted_.push_back(id);
  }
  std::sort(sorted_.begin(), sorted_.end(), [&](int32_t a, int32_t b) {
    return *bytes_[a] < *bytes_[b] || (*bytes_[a] == *bytes_[b] && a < b);
  });
  lcp_.assign(sorted_.size(), 0);
  for (size_t p = 1; p < sorted_.size(); ++p) {
    const std::string& a = *bytes_[sorted_[p - 1]];
    const std::string& b = *bytes_[sorted_[p]];
    size_t k = 0;
    while (k < a.size() && k < b.size() && a[k] == b[k] && k < 65535) ++k;
    lcp_[p] = static_cast<uint16_t>(k);
  }
}

std::shared_ptr<const TokenVocabulary> TokenVocabulary::from_tokenizer(const tokenizer::Tokenizer& tok) {
  std::vector<std::optional<std::string>> bytes(tok.vocab_size());
  for (size_t id = 0; id < bytes.size(); ++id) bytes[id] = tok.token_bytes(static_cast<int32_t>(id));
  std::vector<int32_t> stops = tok.stop_ids();
  if (stops.empty()) {
    if (auto e = tok.eos_id()) stops.push_back(*e);
  }
  return std::make_shared<const TokenVocabulary>(std::move(bytes), std::move(stops));
}

bool TokenVocabulary::is_stop(int32_t id) const {
  return std::binary_search(stop_ids_.begin(), stop_ids_.end(), id);
}

// ---- per-state token tables -------------------------------------------------------------------

static std::vector<std::bitset<256>> escape_bytes(const CompiledGrammar& g);

CompiledConstraint::CompiledConstraint(std::shared_ptr<const CompiledGrammar> g,
                                       std::shared_ptr<const TokenVocabulary> vocab)
    : grammar_(std::move(g)), vocab_(std::move(vocab)), escape_(escape_bytes(*grammar_)) {
  const size_t n = static_cast<size_t>(grammar_->num_states());
  once_ = std::make_unique<std::once_flag[]>(n);
  state_tokens_.resize(n);
}

// For each state, the bytes another rule could read next in its place (XGrammar's lookahead,
// as first and follow sets): where the state's rule may end, the bytes that can follow the
// rule anywhere it is used; where a rule edge leaves, the bytes its rule can begin with (all
// of them where it can match nothing). Fixed points over the whole state space.
static std::vector<std::bitset<256>> escape_bytes(const CompiledGrammar& g) {
  const size_t n = static_cast<size_t>(g.num_states());
  const size_t num_rules = g.rule_start.size();
  std::vector<std::bitset<256>> first(n);   // [num_states]: bytes a path from the state reads first
  std::vector<uint8_t> can_end(n, 0);       // [num_states]: the rule may end with no more bytes
  for (size_t s = 0; s < n; ++s) {
    can_end[s] = g.accepting[s];
    for (int b = 0; b < 256; ++b) first[s][b] = g.step(static_cast<int32_t>(s), static_cast<uint8_t>(b)) >= 0;
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t s = 0; s < n; ++s) {
      for (uint32_t e = g.edge_begin[s]; e < g.edge_begin[s + 1]; ++e) {
        const RuleEdge& edge = g.edges[e];
        std::bitset<256> f = first[s] | first[g.rule_start[edge.rule]];
        if (g.rule_nullable[edge.rule]) {
          f |= first[edge.target];
          if (can_end[edge.target] && !can_end[s]) can_end[s] = 1, changed = true;
        }
        if (f != first[s]) first[s] = f, changed = true;
      }
    }
  }
  std::vector<std::bitset<256>> follow(num_rules);  // [num_rules]
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t s = 0; s < n; ++s) {
      for (uint32_t e = g.edge_begin[s]; e < g.edge_begin[s + 1]; ++e) {
        const RuleEdge& edge = g.edges[e];
        std::bitset<256> f = follow[edge.rule] | first[edge.target];
        if (can_end[edge.target]) f |= follow[g.rule_of[s]];
        if (f != follow[edge.rule]) follow[edge.rule] = f, changed = true;
      }
    }
  }
  std::vector<std::bitset<256>> escape(n);
  for (size_t s = 0; s < n; ++s) {
    if (g.accepting[s]) escape[s] |= follow[g.rule_of[s]];
    for (uint32_t e = g.edge_begin[s]; e < g.edge_begin[s + 1]; ++e) {
      const RuleEdge& edge = g.edges[e];
      escape[s] |= g.rule_nullable[edge.rule] ? std::bitset<256>().set() : first[g.rule_start[edge.rule]];
    }
  }
  return escape;
}

// Walks the sorted vocabulary through one state's rule DFA alone. A token is accepted when
// the DFA reads it whole; refused when the DFA stops on it and at no byte up to there another
// rule could have read that byte instead (`escape`: the rule ending there and its follower
// taking the byte, or a rule edge's rule beginning with it); uncertain otherwise.
// Tokens that share the bytes up to the one a token stopped at share its outcome: refused
// ones are skipped by a binary search (a state that takes few first bytes costs ~256 searches,
// not a pass over the vocabulary).
static std::unique_ptr<CompiledConstraint::StateTokens> build_state_tokens(
    const CompiledGrammar& g, const std::vector<std::bitset<256>>& escape, const TokenVocabulary& v, int32_t state) {
  auto st = std::make_unique<CompiledConstraint::StateTokens>();
  st->accepted.assign(v.mask_words(), 0);
  std::vector<int32_t> states = {state};  // [depth + 1]: the DFA state after depth bytes
  std::vector<uint8_t> touched = {0};     // [depth + 1]: another rule could have read a byte before
  int fail_depth = -1;                               // the previous token stopped at this byte
  bool fail_uncertain = false;
  const auto& sorted = v.sorted();
  const auto& lcp = v.lcp();
  const size_t n = sorted.size();
  for (size_t p = 0; p < n; ++p) {
    const std::string& t = *v.bytes(sorted[p]);
    const size_t common = p == 0 ? 0 : lcp[p];
    if (fail_depth >= 0 && common > static_cast<size_t>(fail_depth)) {
      st->uncertain.push_back(static_cast<uint32_t>(p));  // only uncertain runs get here
      continue;
    }
    size_t d = std::min(common, states.size() - 1);
    states.resize(d + 1);
    touched.resize(d + 1);
    fail_depth = -1;
    for (; d < t.size(); ++d) {
      const int32_t nxt = g.step(states[d], static_cast<uint8_t>(t[d]));
      if (nxt < 0) break;
      states.push_back(nxt);
      touched.push_back(touched[d] || escape[states[d]][static_cast<uint8_t>(t[d])]);
    }
    if (d == t.size()) {
      const int32_t id = sorted[p];
      st->accepted[id / 32] |= 1u << (id % 32);
      continue;
    }
    fail_depth = static_cast<int>(d);
    fail_uncertain = touched[d] || escape[states[d]][static_cast<uint8_t>(t[d])];
    if (fail_uncertain) {
      st->uncertain.push_back(static_cast<uint32_t>(p));
    } else if (p + 1 < n && lcp[p + 1] > d) {
      // Refused with every following token that starts with t[0..d]: jump past them.
      const std::string_view prefix(t.data(), d + 1);
      auto first = sorted.begin() + static_cast<std::ptrdiff_t>(p + 1);
      auto end = std::partition_point(first, sorted.end(), [&](int32_t id) {
        return std::string_view(*v.bytes(id)).substr(0, d + 1) == prefix;
      });
      p = static_cast<size_t>(end - sorted.begin()) - 1;
    }
  }
  size_t count = 0;
  for (uint32_t w : st->accepted) count += static_cast<size_t>(std::popcount(w));
  if (count < st->accepted.size() / 2) {
    for (size_t w = 0; w < st->accepted.size(); ++w) {
      for (uint32_t bits = st->accepted[w]; bits; bits &= bits - 1) {
        st->accepted_ids.push_back(static_cast<int32_t>(w * 32 + static_cast<size_t>(std::countr_zero(bits))));
      }
    }
    std::vector<uint32_t>().swap(st->accepted);
  }
  st->uncertain.shrink_to_fit();
  return st;
}

const CompiledConstraint::StateTokens& CompiledConstraint::state_tokens(int32_t state) const {
  std::call_once(once_[state], [&] { state_tokens_[state] = build_state_tokens(*grammar_, escape_, *vocab_, state); });
  return *state_tokens_[state];
}

// The states with byte transitions reachable from the root's start, breadth first (over byte
// transitions, rule edges' targets and the rules they enter), cut at the budget; then their
// tables, each thread taking the next state in order.
int64_t CompiledConstraint::build_tables(const TableBudget& budget, ThreadPool* pool,
                                         const std::atomic<bool>* cancel) const {
  const CompiledGrammar& g = *grammar_;
  const int64_t visits_per_state = static_cast<int64_t>(vocab_->sorted().size());
  const int64_t bytes_per_state = static_cast<int64_t>(vocab_->mask_words() * sizeof(uint32_t));
  std::vector<uint8_t> seen(static_cast<size_t>(g.num_states()), 0);
  std::vector<int32_t> queue = {g.rule_start[g.root_rule]};
  seen[queue[0]] = 1;
  std::vector<int32_t> order;  // states to build, in the order a walk would meet them
  int64_t visits = 0, bytes = 0;
  for (size_t qi = 0; qi < queue.size(); ++qi) {
    const int32_t s = queue[qi];
    if (g.has_bytes[s]) {
      if (static_cast<int64_t>(order.size()) >= budget.max_states ||
          visits + visits_per_state > budget.max_token_visits || bytes + bytes_per_state > budget.max_bytes) {
        break;
      }
      order.push_back(s);
      visits += visits_per_state;
      bytes += bytes_per_state;
    }
    auto visit = [&](int32_t t) {
      if (t >= 0 && !seen[t]) {
        seen[t] = 1;
        queue.push_back(t);
      }
    };
    for (int b = 0; b < 256; ++b) visit(g.step(s, static_cast<uint8_t>(b)));
    for (uint32_t e = g.edge_begin[s]; e < g.edge_begin[s + 1]; ++e) {
      visit(g.rule_start[g.edges[e].rule]);
      visit(g.edges[e].target);
    }
  }
  std::atomic<size_t> next{0};
  auto work = [&](int64_t, int64_t) {
    for (size_t i = next++; i < order.size() && !(cancel && *cancel); i = next++) {
      state_tokens(order[i]);
      ++tables_built_;
    }
  };
  if (pool && pool->size() > 1 && order.size() > 1) {
    pool->parallel_for(pool->size(), work);
  } else {
    work(0, 1);
  }
  return static_cast<int64_t>(order.size());
}

int64_t CompiledConstraint::table_bytes() const {
  int64_t bytes = 0;
  for (const auto& st : state_tokens_) {
    if (!st) continue;
    bytes += static_cast<int64_t>(sizeof(StateTokens) + st->accepted.capacity() * sizeof(uint32_t) +
                                  st->accepted_ids.capacity() * sizeof(int32_t) +
                                  st->uncertain.capacity() * sizeof(uint32_t));
  }
  return bytes;
}

// ---- matcher ----------------------------------------------------------------------------------

Matcher::Matcher(std::shared_ptr<const CompiledConstraint> c) : c_(std::move(c)), parser_(c_->grammar()) {}

bool Matcher::accept_token(int32_t id) {
  if (terminated_ || id < 0 || static_cast<size_t>(id) >= c_->vocab().size()) return false;
  if (c_->vocab().is_stop(id)) {
    if (!parser_.accepting()) return false;
    terminated_ = true;
    token_bytes_.push_back(0);
    return true;
  }
  const auto& b = c_->vocab().bytes(id);
  if (!b || b->empty()) return false;
  for (size_t i = 0; i < b->size(); ++i) {
    if (!parser_.push_byte(static_cast<uint8_t>((*b)[i]))) {
      parser_.pop_bytes(i);
      return false;
    }
  }
  token_bytes_.push_back(static_cast<uint32_t>(b->size()));
  return true;
}

bool Matcher::is_accepting() const { return !terminated_ && parser_.accepting(); }

void Matcher::rollback(size_t k) {
  for (size_t i = 0; i < k && !token_bytes_.empty(); ++i) {
    const uint32_t n = token_bytes_.back();
    token_bytes_.pop_back();
    if (terminated_) {
      terminated_ = false;  // the stop token (the last one) added no bytes
      continue;
    }
    parser_.pop_bytes(n);
  }
}

void Matcher::fill_mask(std::span<uint32_t> mask) {
  const TokenVocabulary& v = c_->vocab();
  std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(v.mask_words()), 0u);
  if (terminated_) return;
  // Tokens each scanning state decides alone; the rest go through the parser.
  parser_.scanning_states(scratch_states_);
  std::vector<uint32_t>& cand = scratch_candidates_;
  cand.clear();
  for (int32_t s : scratch_states_) {
    const CompiledConstraint::StateTokens& st = c_->state_tokens(s);
    for (size_t w = 0; w < st.accepted.size(); ++w) mask[w] |= st.accepted[w];
    for (int32_t id : st.accepted_ids) mask[id / 32] |= 1u << (id % 32);
    cand.insert(cand.end(), st.uncertain.begin(), st.uncertain.end());
  }
  if (scratch_states_.size() > 1) {
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
  }
  // Walk the candidates in byte order: consecutive ones share a prefix, which stays parsed.
  const auto& sorted = v.sorted();
  const size_t base = parser_.num_bytes();
  const std::string* prev = nullptr;
  int fail_depth = -1;  // the previous candidate was refused at this byte
  for (uint32_t p : cand) {
    const int32_t id = sorted[p];
    if (mask[id / 32] >> (id % 32) & 1u) continue;  // accepted by some state already
    const std::string& t = *v.bytes(id);
    size_t common = 0;
    if (prev) {
      const size_t lim = std::min(prev->size(), t.size());
      while (common < lim && (*prev)[common] == t[common]) ++common;
    }
    if (fail_depth >= 0 && common > static_cast<size_t>(fail_depth)) continue;
    size_t depth = parser_.num_bytes() - base;
    if (depth > common) {
      parser_.pop_bytes(depth - common);
      depth = common;
    }
    fail_depth = -1;
    for (; depth < t.size(); ++depth) {
      if (!parser_.push_byte(static_cast<uint8_t>(t[depth]))) break;
    }
    if (depth == t.size()) {
      mask[id / 32] |= 1u << (id % 32);
    } else {
      fail_depth = static_cast<int>(depth);
    }
    prev = &t;
  }
  parser_.pop_bytes(parser_.num_bytes() - base);
  if (parser_.accepting()) {
    for (int32_t id : v.stop_ids()) {
      if (static_cast<size_t>(id) < v.size()) mask[id / 32] |= 1u << (id % 32);
    }
  }
}

// ---- constraints and the cache ----------------------------------------------------------------

Expected<Grammar> constraint_grammar(ConstraintKind kind, std::string_view text, const JsonOptions& json) {
  switch (kind) {
    case ConstraintKind::kJsonSchema:
      return json_schema_grammar(text, json);
    case ConstraintKind::kJsonObject:
      return json_object_grammar(json);
    case ConstraintKind::kGrammar:
      return parse_gbnf(text);
    case ConstraintKind::kRegex: {
      PHILORA_ASSIGN_OR_RETURN(Expr e, regex_expr(text, RegexMatch::kFull));
      Grammar g;
      g.root = g.add_rule("root");
      g.rules[0].body = std::move(e);
      return g;
    }
    case ConstraintKind::kChoice: {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(text);
      } catch (const std::exception& e) {
        return Status::errorf("choice: not valid JSON: {}", e.what());
      }
      if (!j.is_array() || j.empty()) return Status::error("choice: expected a non-empty array of strings");
      std::vector<Expr> alts;
      for (const auto& s : j) {
        if (!s.is_string()) return Status::error("choice: expected a non-empty array of strings");
        alts.push_back(Expr::lit(s.get<std::string>()));
      }
      Grammar g;
      g.root = g.add_rule("root");
      g.rules[0].body = Expr::alt(std::move(alts));
      return g;
    }
  }
  return Status::error("unknown constraint kind");
}

ConstraintCache::ConstraintCache(std::shared_ptr<const TokenVocabulary> vocab, size_t capacity, CompileLimits limits,
                                 TableBudget tables)
    : vocab_(std::move(vocab)),
      capacity_(std::max<size_t>(capacity, 1)),
      limits_(limits),
      tables_(tables),
      pool_(std::make_unique<ThreadPool>(tables.threads)) {
  if (tables_.background && tables_.max_states > 0) builder_ = std::thread([this] { build_loop(); });
}

ConstraintCache::~ConstraintCache() {
  {
    std::lock_guard<std::mutex> lock(build_mu_);
    stop_ = true;
  }
  build_cv_.notify_all();
  if (builder_.joinable()) builder_.join();
}

void ConstraintCache::build_loop() {
  std::unique_lock<std::mutex> lock(build_mu_);
  while (true) {
    build_cv_.wait(lock, [&] { return stop_ || !build_queue_.empty(); });
    if (stop_) return;
    std::shared_ptr<const CompiledConstraint> c = build_queue_.front().lock();  // null: evicted, unused
    build_queue_.pop_front();
    building_ = true;
    lock.unlock();
    if (c) c->build_tables(tables_, pool_.get(), &stop_);
    c.reset();
    lock.lock();
    building_ = false;
    build_cv_.notify_all();
  }
}

void ConstraintCache::wait_tables() {
  std::unique_lock<std::mutex> lock(build_mu_);
  build_cv_.wait(lock, [&] { return stop_ || (build_queue_.empty() && !building_); });
}

size_t ConstraintCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

Expected<std::shared_ptr<const CompiledConstraint>> ConstraintCache::get(ConstraintKind kind, std::string_view text,
                                                                         const JsonOptions& json) {
  std::string key = std::to_string(static_cast<int>(kind)) + '\0' + json.key() + '\0' + std::string(text);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
  }
  // Compiled outside the lock; two threads may compile the same text once each.
  auto compiled = [&]() -> Entry {
    PHILORA_ASSIGN_OR_RETURN(Grammar g, constraint_grammar(kind, text, json));
    PHILORA_ASSIGN_OR_RETURN(auto cg, compile(g, limits_));
    auto c = std::make_shared<const CompiledConstraint>(cg, vocab_);
    if (tables_.max_states > 0) {
      std::lock_guard<std::mutex> lock(build_mu_);
      if (tables_.background) {
        build_queue_.push_back(c);
        build_cv_.notify_all();
      } else {
        building_ = true;
        c->build_tables(tables_, pool_.get());
        building_ = false;
      }
    }
    return std::shared_ptr<const CompiledConstraint>(std::move(c));
  }();
  std::lock_guard<std::mutex> lock(mu_);
  ++compilations_;
  if (entries_.count(key)) return entries_.at(key).first;
  lru_.push_front(key);
  entries_.emplace(key, std::make_pair(compiled, lru_.begin()));
  while (entries_.size() > capacity_) {
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  return compiled;
}

}  // namespace philora::structured
