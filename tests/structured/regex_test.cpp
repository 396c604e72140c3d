// The regex engine (src/structured/regex.h) against ECMA-262 itself: node's RegExp with the u
// flag decides every (pattern, string) pair, for generated patterns and strings.
#include <gtest/gtest.h>

#include <random>

#include "structured/oracle.h"
#include "structured/regex.h"
#include "test_util.h"

namespace philora::structured {
namespace {

// Pieces the generator draws from: characters of 1 to 4 UTF-8 bytes, escapes, classes.
const std::vector<std::string> kAtoms = {
    "a", "b", "c", "é", "日", "😀", ".", "\\d", "\\w", "\\s", "\\D", "\\W", "\\S", "[abc]",
    "[^a]", "[a-c日]", "[^\\d\\s]", "[é-日]", "[^😀]", "\\u00e9", "\\u{1F600}", "\\uD83D\\uDE00",
    "\\x41", "\\.", "\\n", "\\t", "[\\b]", "\\-", "[-a]", "[a-]", "\\/", "\\*", "[\\]]", "[^]",
    "[]", "\\0", "\\cJ", "A", "0", "[0-9a-fA-F]", "[\\w.-]", "[\\u00a0\\u2028]", "_", " ",
};
const std::vector<std::string> kQuantifiers = {"*", "+", "?", "{2}", "{1,3}", "{2,}", "*?",
                                               "+?", "??", "{0,2}?", "{0}", "{3}"};
// Characters strings are made of: what the atoms match and what they do not.
const std::vector<std::string> kChars = {"a", "b", "c", "é", "日", "😀", "A", "0", "5", "_",
                                         " ", "\n", "\t", "\u00a0", "\u2028", ".", "x", "-",
                                         "\r", "/", "*", "]", "\b", std::string(1, '\0'), "ÿ"};

std::string gen_pattern(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> pick(0, 99);
  const int n_alts = pick(rng) < 20 && depth < 3 ? 2 + pick(rng) % 2 : 1;
  std::string out;
  for (int a = 0; a < n_alts; ++a) {
    if (a) out += "|";
    const int n_terms = 1 + pick(rng) % 4;
    for (int t = 0; t < n_terms; ++t) {
      std::string atom;
      const int k = pick(rng);
      if (k < 15 && depth < 3) {
        atom = std::string(k < 8 ? "(" : "(?:") + gen_pattern(rng, depth + 1) + ")";
      } else {
        atom = kAtoms[pick(rng) % kAtoms.size()];
      }
      if (pick(rng) < 35) atom += kQuantifiers[pick(rng) % kQuantifiers.size()];
      out += atom;
    }
  }
  return out;
}

std::string gen_string(std::mt19937& rng) {
  std::uniform_int_distribution<int> len(0, 7);
  std::string s;
  for (int i = len(rng); i > 0; --i) s += kChars[rng() % kChars.size()];
  return s;
}

// A string the DFA accepts, by a random walk (nullopt when the walk gets nowhere): it makes
// matching cases common; node still decides them.
std::optional<std::string> sample_dfa(const Dfa& dfa, std::mt19937& rng) {
  std::string s;
  int32_t st = dfa.start;
  for (int steps = 0; steps < 40; ++steps) {
    if (dfa.accepting[st] && rng() % 3 == 0) return s;
    std::vector<int> bytes;
    for (int b = 0; b < 256; ++b) {
      if (dfa.step(st, static_cast<uint8_t>(b)) >= 0) bytes.push_back(b);
    }
    if (bytes.empty()) return dfa.accepting[st] ? std::optional<std::string>(s) : std::nullopt;
    const int b = bytes[rng() % bytes.size()];
    s.push_back(static_cast<char>(b));
    st = dfa.step(st, static_cast<uint8_t>(b));
  }
  return std::nullopt;
}

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (...) {
    return false;
  }
}

TEST(StructuredRegex, GeneratedPatternsMatchLikeNodeRegExp) {
  if (!test::have_node()) GTEST_SKIP() << "node is not installed";
  std::mt19937 rng(20240521);
  struct Case {
    std::string pattern;
    std::vector<std::string> strings;
    std::optional<Dfa> full, search;
    std::string our_error;
  };
  std::vector<Case> cases;
  nlohmann::json in = nlohmann::json::array();
  for (int i = 0; i < 600; ++i) {
    Case c;
    c.pattern = gen_pattern(rng, 0);
    if (rng() % 5 == 0) c.pattern = "^" + c.pattern;
    if (rng() % 5 == 0) c.pattern += "$";
    auto full = compile_regex(c.pattern, RegexMatch::kFull);
    auto search = compile_regex(c.pattern, RegexMatch::kSearch);
    if (full.ok()) c.full = std::move(*full);
    else c.our_error = full.status().message();
    if (search.ok()) c.search = std::move(*search);
    for (int k = 0; k < 12; ++k) c.strings.push_back(gen_string(rng));
    if (c.full) {
      for (int k = 0; k < 12; ++k) {
        if (auto s = sample_dfa(*c.full, rng)) c.strings.push_back(*s);
      }
    }
    // Every string is also tried with a character around it (search vs full).
    const size_t n = c.strings.size();
    for (size_t k = 0; k < n; k += 3) c.strings.push_back("x" + c.strings[k] + "\n");
    for (const auto& s : c.strings) ASSERT_TRUE(valid_utf8(s)) << c.pattern;
    in.push_back({{"pattern", c.pattern}, {"strings", c.strings}});
    cases.push_back(std::move(c));
  }
  std::string err;
  auto out = test::run_oracle("regex", in, &err);
  ASSERT_TRUE(out) << err;
  ASSERT_EQ(out->size(), cases.size());
  size_t compared = 0, matched = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto& o = (*out)[i];
    if (!o["error"].is_null()) {
      // node refuses it: so must we.
      EXPECT_FALSE(c.full.has_value()) << c.pattern << " node: " << o["error"];
      continue;
    }
    ASSERT_TRUE(c.full.has_value()) << c.pattern << ": " << c.our_error;
    ASSERT_TRUE(c.search.has_value()) << c.pattern;
    for (size_t k = 0; k < c.strings.size(); ++k) {
      const bool full = c.full->matches(c.strings[k]), search = c.search->matches(c.strings[k]);
      EXPECT_EQ(full, o["full"][k].get<bool>())
          << "pattern " << nlohmann::json(c.pattern) << " string " << nlohmann::json(c.strings[k]);
      EXPECT_EQ(search, o["search"][k].get<bool>())
          << "search: pattern " << nlohmann::json(c.pattern) << " string "
          << nlohmann::json(c.strings[k]);
      ++compared;
      matched += full;
    }
  }
  // The generator must exercise both outcomes, or the comparison says little.
  EXPECT_GT(compared, 10000u);
  EXPECT_GT(matched, compared / 10);
  std::printf("regex: %zu (pattern, string) pairs compared with node, %zu full matches\n", compared,
              matched);
}

TEST(StructuredRegex, HandWrittenPatternsMatchLikeNodeRegExp) {
  if (!test::have_node()) GTEST_SKIP() << "node is not installed";
  // Patterns from JSON schemas in the wild and corner cases of the syntax.
  const std::vector<std::string> patterns = {
      "^[A-Z]{2}-\\d{4}$", "^\\+?[0-9 ()-]{7,20}$", "^[a-z0-9_-]{3,16}$", "colou?r",
      "^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "^$", "",
      "a|^b|c$", "^a|b", "(a|b)*c", "x{0}y", "[\\s\\S]", "\\u{10FFFF}", "[\\u{10000}-\\u{10FFFF}]",
      "^.{2,3}$", "^\\S+$", "[^\\W\\d]", "(?:ab)+?", "^[\\d.]+$", "^-?\\d+(\\.\\d+)?$",
      "^[\\u4e00-\\u9fff]+$", "^\\p{L}+$", "a(?=b)", "(a)\\1", "\\bword\\b", "a{", "a{2,1}",
      "(?<x>a)\\k<x>", "[z-a]", "a**", "(", ")", "[", "\\", "a$b", "(^a)"};
  std::mt19937 rng(7);
  nlohmann::json in = nlohmann::json::array();
  std::vector<std::vector<std::string>> strings;
  for (const auto& p : patterns) {
    std::vector<std::string> s = {"", "ab", "AB-1234", "+1 (555) 123", "user_01", "color", "colour",
                                  "(555)123-4567", "me@x.org", "a", "b", "c", "ba", "y", " ", "日本",
                                  "😀", "\u00a0", "12.5", "-3", "ab\n", "\u4e2d\u6587", "word"};
    for (int k = 0; k < 20; ++k) s.push_back(gen_string(rng));
    in.push_back({{"pattern", p}, {"strings", s}});
    strings.push_back(std::move(s));
  }
  std::string err;
  auto out = test::run_oracle("regex", in, &err);
  ASSERT_TRUE(out) << err;
  for (size_t i = 0; i < patterns.size(); ++i) {
    const auto& o = (*out)[i];
    auto full = compile_regex(patterns[i], RegexMatch::kFull);
    auto search = compile_regex(patterns[i], RegexMatch::kSearch);
    if (!o["error"].is_null()) {
      EXPECT_FALSE(full.ok()) << patterns[i] << " is refused by node: " << o["error"];
      continue;
    }
    if (!full.ok()) {
      // What we refuse although ECMA accepts it: only the documented unsupported features.
      const std::string m = full.status().message();
      EXPECT_TRUE(m.find("not supported") != std::string::npos ||
                  m.find("only at the start and end") != std::string::npos)
          << patterns[i] << ": " << m;
      continue;
    }
    ASSERT_TRUE(search.ok()) << patterns[i];
    for (size_t k = 0; k < strings[i].size(); ++k) {
      EXPECT_EQ(full->matches(strings[i][k]), o["full"][k].get<bool>())
          << patterns[i] << " / " << nlohmann::json(strings[i][k]);
      EXPECT_EQ(search->matches(strings[i][k]), o["search"][k].get<bool>())
          << "search " << patterns[i] << " / " << nlohmann::json(strings[i][k]);
    }
  }
}

TEST(StructuredRegex, UnsupportedFeaturesAreNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"(a)\\1", "backreferences"},          {"(?<n>a)\\k<n>", "backreferences"},
      {"a(?=b)", "lookahead"},               {"a(?!b)", "lookahead"},
      {"(?<=a)b", "lookbehind"},             {"(?<!a)b", "lookbehind"},
      {"\\bx", "word boundary"},             {"\\p{L}", "Unicode property"},
      {"a^b", "anchors"},                    {"(a$)b", "anchors"},
      {"a{1001}", "repetition count above"}, {"[b-a]", "out of order"},
      {"(ab", "missing ')'"},                {"*a", "nothing to repeat"},
  };
  for (const auto& [pattern, words] : cases) {
    auto r = compile_regex(pattern);
    ASSERT_FALSE(r.ok()) << pattern;
    EXPECT_HAS(r.status().message(), words);
  }
}

TEST(StructuredRegex, StateLimitIsAnErrorNotAHang) {
  // The n-th symbol from the end is an 'a': 2^n DFA states.
  FsmLimits limits;
  limits.max_dfa_states = 1000;
  auto r = compile_regex("(a|b)*a(a|b){12}", RegexMatch::kFull, limits);
  ASSERT_FALSE(r.ok());
  EXPECT_HAS(r.status().message(), "more than 1000 DFA states");
  // Within the default limit it compiles, and minimization keeps it at 2^(n+1) states.
  auto ok = compile_regex("(a|b)*a(a|b){5}");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->num_states(), 64);
  EXPECT_TRUE(ok->matches("bbbabbbbb"));
  EXPECT_FALSE(ok->matches("bbbbabbbb"));
  auto nfa = compile_regex("((a{1000}){1000}){1000}");
  ASSERT_FALSE(nfa.ok());
  EXPECT_HAS(nfa.status().message(), "NFA states");
}

}  // namespace
}  // namespace philora::structured
