// Masks against a brute-force check of every token, rollback, GBNF grammars against a
// recursive-descent recognizer, choices, regex constraints, the cache, and mask timing.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "structured/oracle.h"
#include "structured/parser.h"
#include "structured/walk.h"
#include "test_util.h"

namespace philora::structured {
namespace {

// The slow path: a fresh parser fed the text so far, then each token's bytes one by one.
std::vector<uint32_t> brute_force_mask(const std::shared_ptr<const CompiledConstraint>& c, const std::string& text) {
  const TokenVocabulary& v = c->vocab();
  std::vector<uint32_t> mask(v.mask_words(), 0);
  EarleyParser p(c->grammar());
  for (char ch : text) {
    if (!p.push_byte(static_cast<uint8_t>(ch))) return mask;
  }
  for (size_t id = 0; id < v.size(); ++id) {
    bool ok;
    if (v.is_stop(static_cast<int32_t>(id))) {
      ok = p.accepting();
    } else if (!v.bytes(static_cast<int32_t>(id)) || v.bytes(static_cast<int32_t>(id))->empty()) {
      ok = false;
    } else {
      const std::string& b = *v.bytes(static_cast<int32_t>(id));
      size_t n = 0;
      while (n < b.size() && p.push_byte(static_cast<uint8_t>(b[n]))) ++n;
      ok = n == b.size();
      p.pop_bytes(n);
    }
    if (ok) mask[id / 32] |= 1u << (id % 32);
  }
  return mask;
}

std::string text_of(const TokenVocabulary& v, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!v.is_stop(id)) s += *v.bytes(id);
  }
  return s;
}

TEST(StructuredMatcher, MasksEqualBruteForceOnRandomStates) {
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  ConstraintCache cache(vocab);
  struct C {
    ConstraintKind kind;
    std::string text;
  };
  const std::vector<C> constraints = {
      {ConstraintKind::kJsonSchema,
       R"({"type":"object","properties":{"id":{"type":"integer","minimum":-3,"maximum":250},"name":{"type":"string","maxLength":5},
          "kids":{"type":"array","items":{"$ref":"#"},"maxItems":2},"t":{"enum":["a\"b","日本",null]}},"required":["id"]})"},
      {ConstraintKind::kJsonObject, ""},
      {ConstraintKind::kRegex, "(\\d{1,3}\\.){3}\\d{1,3}|[a-z]+@[a-z]+\\.(com|org)"},
      {ConstraintKind::kGrammar, "root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]+ | \"(\" expr \")\" | \"x\" [a-z]* \"x\"\n"},
      {ConstraintKind::kChoice, R"(["positive","negative","neutral ","日本語"])"},
  };
  int compared = 0;
  for (const C& k : constraints) {
    auto c = cache.get(k.kind, k.text);
    ASSERT_TRUE(c.ok()) << k.text << ": " << c.status().message();
    for (uint64_t seed = 0; seed < 4; ++seed) {
      std::vector<uint32_t> mask(vocab->mask_words());
      // Replay the walk with a check at every step against the slow path.
      test::Walk w = test::random_walk(*c, seed, 60, 30);
      Matcher m(*c);
      for (size_t i = 0; i <= w.tokens.size(); ++i) {
        if (m.is_terminated()) break;
        m.fill_mask(mask);
        const std::string text = text_of(*vocab, std::vector<int32_t>(w.tokens.begin(), w.tokens.begin() + i));
        const std::vector<uint32_t> slow = brute_force_mask(*c, text);
        ASSERT_EQ(test::allowed_ids(mask, vocab->size()), test::allowed_ids(slow, vocab->size()))
            << k.text << " after " << nlohmann::json(text).dump();
        ++compared;
        if (i < w.tokens.size()) {
          ASSERT_TRUE(m.accept_token(w.tokens[i]));
        }
      }
    }
  }
  EXPECT_GT(compared, 100);
}

TEST(StructuredMatcher, RollbackRestoresMasks) {
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  ConstraintCache cache(vocab);
  auto c = cache.get(ConstraintKind::kJsonObject, "");
  ASSERT_TRUE(c.ok());
  for (uint64_t seed = 0; seed < 3; ++seed) {
    test::Walk w = test::random_walk(*c, seed, 80, 40);
    Matcher m(*c);
    std::vector<std::vector<uint32_t>> masks;
    std::vector<uint32_t> mask(vocab->mask_words());
    for (int32_t id : w.tokens) {
      m.fill_mask(mask);
      masks.push_back(mask);
      ASSERT_TRUE(m.accept_token(id));
    }
    std::mt19937 rng(static_cast<uint32_t>(seed));
    while (m.num_tokens() > 0) {
      const size_t k = 1 + rng() % std::min<size_t>(5, m.num_tokens());
      m.rollback(k);
      EXPECT_FALSE(m.is_terminated());
      m.fill_mask(mask);
      ASSERT_EQ(mask, masks[m.num_tokens()]) << "after rolling back to " << m.num_tokens() << " tokens";
    }
    // And forward again over the same tokens.
    for (int32_t id : w.tokens) ASSERT_TRUE(m.accept_token(id));
    EXPECT_EQ(m.is_terminated(), w.finished);
  }
}

// A recursive-descent recognizer of the test grammar (written without its left recursion):
//   expr ::= term ("+" term)*   term ::= factor ("*" factor)*   factor ::= [0-9]+ | "(" expr ")"
struct Rd {
  const std::string& s;
  size_t i = 0;
  bool factor() {
    if (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
      return true;
    }
    if (i < s.size() && s[i] == '(') {
      ++i;
      if (!expr() || i >= s.size() || s[i] != ')') return false;
      ++i;
      return true;
    }
    return false;
  }
  bool term() {
    if (!factor()) return false;
    while (i < s.size() && s[i] == '*') {
      ++i;
      if (!factor()) return false;
    }
    return true;
  }
  bool expr() {
    if (!term()) return false;
    while (i < s.size() && s[i] == '+') {
      ++i;
      if (!term()) return false;
    }
    return true;
  }
};

TEST(StructuredGrammar, LeftRecursiveGbnfMatchesRecursiveDescent) {
  const char* gbnf = R"G(# arithmetic, left recursive
root   ::= expr
expr   ::= expr "+" term |
           term
term   ::= term "*" factor | factor
factor ::= digit+ | "(" expr ")"
digit  ::= [0-9]
)G";
  auto g = parse_gbnf(gbnf);
  ASSERT_TRUE(g.ok()) << g.status().message();
  auto cg = compile(*g);
  ASSERT_TRUE(cg.ok()) << cg.status().message();
  std::mt19937 rng(3);
  const std::string alphabet = "12+*()";
  int accepted = 0, total = 0;
  for (int n = 0; n < 20000; ++n) {
    std::string s;
    for (int len = static_cast<int>(rng() % 10); len > 0; --len) s += alphabet[rng() % alphabet.size()];
    Rd rd{s};
    const bool expect = rd.expr() && rd.i == s.size();
    EarleyParser p(*cg);
    bool ok = true;
    for (char ch : s) ok = ok && p.push_byte(static_cast<uint8_t>(ch));
    ASSERT_EQ(ok && p.accepting(), expect) << s;
    accepted += expect;
    ++total;
  }
  EXPECT_GT(accepted, 300);
}

TEST(StructuredGrammar, GbnfDialect) {
  // Escapes, classes, negation, any character, repetitions, comments, nullable rules.
  auto g = parse_gbnf(
      "root ::= greeting \" \" name{1,2} tail? empty\n"
      "greeting ::= (\"h\\x69\" | \"\\u00e9t\\u00E9\") # hi or été\n"
      "name ::= [A-Z] [^ \\n\"]*\n"
      "tail ::= \"!\"+ | . \n"
      "empty ::= \n");
  ASSERT_TRUE(g.ok()) << g.status().message();
  auto cg = compile(*g);
  ASSERT_TRUE(cg.ok()) << cg.status().message();
  auto accepts = [&](const std::string& s) {
    EarleyParser p(*cg);
    for (char ch : s) {
      if (!p.push_byte(static_cast<uint8_t>(ch))) return false;
    }
    return p.accepting();
  };
  EXPECT_TRUE(accepts("hi Bob"));
  EXPECT_TRUE(accepts("été Ana日本!!!"));
  EXPECT_TRUE(accepts("hi B😀"));
  EXPECT_FALSE(accepts("hi bob"));
  EXPECT_FALSE(accepts("hello Bob"));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"root ::= foo\n", "rule 'foo' is used but never defined"},
      {"start ::= \"a\"\n", "no rule named 'root'"},
      {"root ::= \"a\\q\"\n", "unknown escape"},
      {"root ::= \"abc\n", "unterminated string"},
      {"root ::= [b-a]\n", "range out of order"},
      {"root ::= \"a\"\nroot ::= \"b\"\n", "defined twice"},
      {"root ::= (\"a\"\n", "expected ')'"},
      {"root ::= \"a\"{3,1}\n", "n < m"},
      {"root ::= bad\nbad ::= bad \"x\"\n", "can never match"},
  };
  for (const auto& [text, words] : bad) {
    auto r = parse_gbnf(text);
    Status st = r.status();
    if (r.ok()) st = compile(*r).status();
    ASSERT_FALSE(st.ok()) << text;
    EXPECT_HAS(st.message(), words);
  }
}

TEST(StructuredMatcher, ChoiceAndRegexOutputs) {
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  ConstraintCache cache(vocab);
  const std::vector<std::string> choices = {"positive", "negative", "neutral ", "日本語"};
  auto c = cache.get(ConstraintKind::kChoice, nlohmann::json(choices).dump());
  ASSERT_TRUE(c.ok());
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    test::Walk w = test::random_walk(*c, seed);
    ASSERT_TRUE(w.finished);
    ASSERT_NE(std::find(choices.begin(), choices.end(), w.text), choices.end()) << w.text;
    seen.insert(w.text);
  }
  EXPECT_EQ(seen.size(), choices.size());
  if (!test::have_node()) GTEST_SKIP() << "node is not installed";
  const std::vector<std::string> patterns = {"(\\d{1,3}\\.){3}\\d{1,3}", "[a-z]+@[a-z]+\\.(com|org)",
                                             "\\w+( \\w+){0,3}[.!?]", "[^\\n]{0,10}\\n", "(?:日本|é+)\\s?[0-9a-f]{4}"};
  nlohmann::json in = nlohmann::json::array();
  for (const auto& p : patterns) {
    auto rc = cache.get(ConstraintKind::kRegex, p);
    ASSERT_TRUE(rc.ok()) << rc.status().message();
    std::vector<std::string> outs;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      test::Walk w = test::random_walk(*rc, seed, 200, 20);
      if (w.finished) outs.push_back(w.text);
    }
    EXPECT_GE(outs.size(), 15u) << p;
    in.push_back({{"pattern", p}, {"strings", outs}});
  }
  std::string err;
  auto out = test::run_oracle("regex", in, &err);
  ASSERT_TRUE(out) << err;
  for (size_t i = 0; i < patterns.size(); ++i) {
    for (size_t k = 0; k < in[i]["strings"].size(); ++k) {
      EXPECT_TRUE((*out)[i]["full"][k].get<bool>()) << patterns[i] << " " << in[i]["strings"][k];
    }
  }
}

TEST(StructuredMatcher, CacheKeysByTextAndNamesErrors) {
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  ConstraintCache cache(vocab, 2);
  auto a = cache.get(ConstraintKind::kRegex, "a+");
  auto b = cache.get(ConstraintKind::kRegex, "a+");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(cache.compilations(), 1u);
  auto bad = cache.get(ConstraintKind::kRegex, "a(?=b)");
  ASSERT_FALSE(bad.ok());
  EXPECT_HAS(bad.status().message(), "lookahead");
  auto bad2 = cache.get(ConstraintKind::kRegex, "a(?=b)");
  EXPECT_EQ(cache.compilations(), 2u);  // the error was cached
  cache.get(ConstraintKind::kRegex, "b+");
  EXPECT_EQ(cache.size(), 2u);  // LRU bound
  auto g = cache.get(ConstraintKind::kJsonSchema, R"({"type":"object"})");
  auto h = cache.get(ConstraintKind::kJsonSchema, R"({"type":"object"})", JsonOptions{0});
  ASSERT_TRUE(g.ok() && h.ok());
  EXPECT_NE(g->get(), h->get());  // options are part of the key
  // Matchers on several threads share one compiled constraint (its per-state tables too).
  std::vector<std::thread> threads;
  std::vector<std::string> texts(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { texts[t] = test::random_walk(*g, 11, 80, 40).text; });
  }
  for (auto& th : threads) th.join();
  for (int t = 1; t < 4; ++t) EXPECT_EQ(texts[t], texts[0]);
}

// Benchmark, printed (not asserted): mask time on the embedded 8k vocabulary.
TEST(StructuredMatcher, MaskTiming) {
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  const std::vector<std::pair<const char*, std::string>> cases = {
      {"json_object", ""},
      {"schema", R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":150},
                   "tags":{"type":"array","items":{"type":"string"}},"email":{"type":"string","format":"email"}},
                   "required":["name","age","tags","email"],"additionalProperties":false})"},
  };
  for (const auto& [name, text] : cases) {
    ConstraintCache cache(vocab);
    const auto t0 = std::chrono::steady_clock::now();
    auto c = cache.get(text.empty() ? ConstraintKind::kJsonObject : ConstraintKind::kJsonSchema, text);
    const double compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(c.ok());
    std::vector<double> first, warm;
    for (uint64_t seed = 0; seed < 10; ++seed) {
      test::Walk w = test::random_walk(*c, seed, 200, 80);
      (seed == 0 ? first : warm).insert((seed == 0 ? first : warm).end(), w.mask_us.begin(), w.mask_us.end());
    }
    std::sort(first.begin(), first.end());
    std::sort(warm.begin(), warm.end());
    std::printf("mask timing %s (vocab %zu): compile %.2f ms; first walk median %.1f us max %.1f us; "
                "warm (%zu masks) median %.1f us p90 %.1f us p99 %.1f us\n",
                name, vocab->size(), compile_ms, first[first.size() / 2], first.back(), warm.size(),
                warm[warm.size() / 2], warm[warm.size() * 9 / 10], warm[warm.size() * 99 / 100]);
  }
}

}  // namespace
}  // namespace philora::structured
