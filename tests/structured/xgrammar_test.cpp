// Masks against XGrammar itself (npm @mlc-ai/web-xgrammar: XGrammar compiled to WebAssembly,
// run by node through xgrammar_oracle.mjs): for JSON schemas, regexes and GBNF grammars on the
// embedded tokenizer, random token walks through our masks (a fresh seed each run, printed),
// and at every step our allowed-token set equals XGrammar's. Skipped until scripts/test.sh
// installs tests/structured/node_modules.
//
// Only where the two engines define the same language by construction: JSON in the compact
// form (our max_whitespace = 0, XGrammar's any_whitespace = false with separators "," and ":";
// our default allows up to 8 whitespace characters between tokens, XGrammar's default any
// number of [ \n\t]), schemas whose keywords both read the same way (no bounds on numbers or
// lengths, no formats: XGrammar writes some of those differently), regexes without anchors or
// Unicode classes, and GBNF in the subset XGrammar's EBNF shares with llama.cpp's.
//
// Two known differences, both where XGrammar allows text that is not valid Unicode and we do
// not, are counted and printed, not failed: a token XGrammar alone allows is excused when the
// text with it is no prefix of valid UTF-8 (XGrammar reads UTF-8 by bit patterns: it takes the
// lead bytes 0xC0, 0xC1, 0xF5-0xF7 and continuation bytes that make overlong forms, UTF-16
// surrogates or code points beyond U+10FFFF), or when it writes a `\u` escape of a surrogate
// (XGrammar: any four hex digits; we: none). A token only we allow fails, except one that writes
// the integer -0 (we allow it in an integer without bounds, as JSON and ajv do; XGrammar not).
#include <gtest/gtest.h>

#include <cctype>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "structured/oracle.h"
#include "structured/walk.h"

namespace philora::structured {
namespace {

bool have_xgrammar() {
  return test::have_node() &&
         std::filesystem::exists(test::kOracleDir / "node_modules/@mlc-ai/web-xgrammar/package.json");
}

// tokenizer.json's token strings by id, "" for the special tokens (XGrammar's convention for
// tokens that are never text; ours: no bytes).
std::vector<std::string> raw_vocab() {
  std::ifstream f(std::string(PHILORA_TINY_MODEL) + "/tokenizer.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  std::vector<std::string> v(j["model"]["vocab"].size());
  for (const auto& [text, id] : j["model"]["vocab"].items()) v.at(id.get<size_t>()) = text;
  for (const auto& a : j["added_tokens"]) {
    const size_t id = a["id"].get<size_t>();
    if (id >= v.size()) v.resize(id + 1);
    v[id] = a.value("special", false) ? "" : a["content"].get<std::string>();
  }
  return v;
}

// `s` cannot begin valid UTF-8 (Unicode's well-formed byte sequences, table 3-7), or holds a
// JSON `\u` escape whose digits so far begin a surrogate (D800-DFFF).
bool excused(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      n = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return true;  // a continuation byte first, C0, C1, F5-FF
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;  // a prefix of a valid character
      const auto d = static_cast<unsigned char>(s[i + k]);
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return true;
    }
    i += n + 1;
  }
  for (size_t i = 0; i + 3 < s.size(); ++i) {
    if (s[i] != '\\') continue;
    if (s[i + 1] == 'u' && (s[i + 2] == 'd' || s[i + 2] == 'D') &&
        std::string("89abcdefABCDEF").find(s[i + 3]) != std::string::npos) {
      return true;
    }
    ++i;  // the escaped character starts no escape
  }
  return false;
}

// `s` writes the integer -0 (a JSON integer, which ajv accepts and we allow where an integer has
// no bounds; XGrammar's integers never start with "-0").
bool minus_zero(const std::string& s) {
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] != '-' || s[i + 1] != '0' || (i > 0 && std::isdigit(static_cast<unsigned char>(s[i - 1])))) continue;
    if (i + 2 == s.size() || std::string("0123456789.eE").find(s[i + 2]) == std::string::npos) return true;
  }
  return false;
}

struct Case {
  ConstraintKind kind;
  std::string xg_kind;  // the oracle's: json_schema, regex, ebnf
  std::string text;
};

TEST(StructuredXGrammar, MasksEqualXGrammarOnRandomWalks) {
  if (!have_xgrammar()) GTEST_SKIP() << "node or tests/structured/node_modules missing (scripts/test.sh)";
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  const std::vector<Case> cases = {
      {ConstraintKind::kJsonSchema, "json_schema",
       R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"ok":{"type":"boolean"}},"required":["name","age","ok"]})"},
      {ConstraintKind::kJsonSchema, "json_schema",
       R"({"type":"object","properties":{"id":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}},
           "kind":{"enum":["a","b c","d\"e"]},"pos":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}},"required":["x","y"]}},
           "required":["id","tags","kind","pos"]})"},
      {ConstraintKind::kJsonSchema, "json_schema",
       R"({"type":"object","properties":{"a":{"type":"string"},"b":{"type":["integer","null"]},"c":{"anyOf":[{"type":"string"},{"type":"array","items":{"type":"integer"}}]}},"required":["a","b","c"]})"},
      {ConstraintKind::kRegex, "regex", R"([a-z]{1,8}@[a-z]{2,6}\.(com|org|net))"},
      {ConstraintKind::kRegex, "regex", R"(\d{3}-\d{4}|\(\d{3}\) \d{3}-\d{4})"},
      {ConstraintKind::kRegex, "regex", R"((ab|cd)*e?[0-9]+(\.[0-9]+)?)"},
      {ConstraintKind::kGrammar, "ebnf",
       "root ::= expr\nexpr ::= term (\"+\" term)*\nterm ::= num | \"(\" expr \")\"\nnum ::= [0-9]+\n"},
      {ConstraintKind::kGrammar, "ebnf",
       "root ::= \"[\" (item (\",\" item)*)? \"]\"\nitem ::= [a-z]+ | root\n"},
  };
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  SCOPED_TRACE("seed " + std::to_string(seed));
  JsonOptions compact;
  compact.max_whitespace = 0;
  ConstraintCache cache(vocab);
  constexpr int kWalks = 4;

  nlohmann::json in;
  in["vocab"] = raw_vocab();
  ASSERT_EQ(in["vocab"].size(), vocab->size());
  in["vocab_type"] = "byte_level";
  in["stop"] = vocab->stop_ids();
  in["cases"] = nlohmann::json::array();
  std::vector<std::shared_ptr<const CompiledConstraint>> compiled;
  std::vector<std::vector<std::vector<int32_t>>> walks;  // [case][walk]: tokens
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    auto c = cache.get(cases[ci].kind, cases[ci].text, compact);
    ASSERT_TRUE(c.ok()) << cases[ci].text << ": " << c.status().message();
    compiled.push_back(*c);
    walks.emplace_back();
    for (int w = 0; w < kWalks; ++w) {
      walks.back().push_back(test::random_walk(*c, seed + ci * kWalks + w, 48, 24).tokens);
    }
    in["cases"].push_back({{"kind", cases[ci].xg_kind}, {"text", cases[ci].text}, {"walks", walks.back()}});
  }
  std::string error;
  const auto out = test::run_oracle_script("xgrammar_oracle.mjs", "", in, &error);
  ASSERT_TRUE(out) << error;
  ASSERT_EQ(out->size(), cases.size());

  size_t steps = 0, excused_tokens = 0, excused_ours = 0;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    SCOPED_TRACE(cases[ci].text);
    const nlohmann::json& r = (*out)[ci];
    ASSERT_TRUE(r["error"].is_null()) << "XGrammar: " << r["error"];
    for (int w = 0; w < kWalks; ++w) {
      const std::vector<int32_t>& tokens = walks[ci][w];
      const nlohmann::json& xw = r["walks"][w];
      EXPECT_TRUE(xw["refused"].is_null()) << "XGrammar refused token " << xw["refused"] << " of walk " << w;
      Matcher m(compiled[ci]);
      std::vector<uint32_t> mask(vocab->mask_words());
      std::string text;
      const auto& masks = xw["masks"];
      for (size_t step = 0; step < masks.size(); ++step) {
        m.fill_mask(mask);
        const std::string hex = masks[step].get<std::string>();
        ASSERT_EQ(hex.size(), vocab->mask_words() * 8);
        std::vector<int32_t> only_ours, only_theirs;
        for (size_t word = 0; word < vocab->mask_words(); ++word) {
          const uint32_t theirs = static_cast<uint32_t>(std::stoul(hex.substr(word * 8, 8), nullptr, 16));
          for (int bit = 0; bit < 32; ++bit) {
            const auto id = static_cast<int32_t>(word * 32 + bit);
            const bool a = mask[word] >> bit & 1u, b = theirs >> bit & 1u;
            if (a && !b) {
              if (vocab->bytes(id) && minus_zero(text + *vocab->bytes(id))) {
                ++excused_ours;
              } else {
                only_ours.push_back(id);
              }
            }
            if (b && !a) {
              if (vocab->bytes(id) && excused(text + *vocab->bytes(id))) {
                ++excused_tokens;
              } else {
                only_theirs.push_back(id);
              }
            }
          }
        }
        auto show = [&](const std::vector<int32_t>& ids) {
          nlohmann::json j = nlohmann::json::array();
          for (size_t i = 0; i < ids.size() && i < 8; ++i) {
            const auto& b = vocab->bytes(ids[i]);
            j.push_back(std::to_string(ids[i]) + "=" + (b ? *b : std::string("<special>")));
          }
          return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        };
        EXPECT_TRUE(only_ours.empty() && only_theirs.empty())
            << "walk " << w << " step " << step << " after "
            << nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << ": only ours "
            << only_ours.size() << " " << show(only_ours) << ", only XGrammar's " << only_theirs.size() << " "
            << show(only_theirs);
        if (!only_ours.empty() || !only_theirs.empty()) break;
        ++steps;
        if (step == tokens.size()) break;
        ASSERT_TRUE(m.accept_token(tokens[step]));
        if (const auto& b = vocab->bytes(tokens[step])) text += *b;
      }
    }
  }
  std::printf("%zu masks equal XGrammar's over %zu constraints (excused: %zu tokens XGrammar alone allowed, "
              "not valid Unicode; %zu we alone allowed, -0)\n", steps, cases.size(), excused_tokens, excused_ours);
}

}  // namespace
}  // namespace philora::structured
