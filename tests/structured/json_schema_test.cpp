// JSON Schema constraints end to end: random token walks over the embedded model's tokenizer,
// every finished output parsed and validated by ajv 8 + ajv-formats (independent); the bytes a
// constraint refuses after hand-built prefixes against ajv on completions.
#include <gtest/gtest.h>

#include <algorithm>

#include "structured/oracle.h"
#include "structured/parser.h"
#include "structured/walk.h"
#include "test_util.h"

namespace philora::structured {
namespace {

// Schemas of the suite: nested objects, enums, arrays with bounds, numbers with bounds,
// $ref (recursive), anyOf, formats, patterns, strings with escapes and Unicode.
const std::vector<std::string> kSchemas = {
    R"({"type":"object","properties":{
        "name":{"type":"string","minLength":1,"maxLength":12},
        "age":{"type":"integer","minimum":0,"maximum":130},
        "score":{"type":"number","exclusiveMinimum":-1.5,"maximum":99.25},
        "tags":{"type":"array","items":{"type":"string","enum":["a","b","c d","é","日本"]},"minItems":1,"maxItems":3},
        "address":{"type":"object","properties":{"city":{"type":"string"},
                   "zip":{"type":"string","pattern":"^\\d{5}(-\\d{4})?$"}},"required":["city"],"additionalProperties":false},
        "active":{"type":"boolean"},
        "note":{"type":["string","null"]}},
       "required":["name","age","tags"],"additionalProperties":false})",
    R"({"$defs":{"node":{"type":"object","properties":{"value":{"type":"integer","minimum":-50,"maximum":50},
        "children":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},
        "required":["value","children"],"additionalProperties":false}},"$ref":"#/$defs/node"})",
    R"({"type":"object","properties":{"kind":{"const":"circle"},
        "shape":{"anyOf":[{"type":"object","properties":{"r":{"type":"number","minimum":0,"maximum":10}},"required":["r"],"additionalProperties":false},
                          {"type":"array","items":{"type":"integer","minimum":-5,"maximum":5},"minItems":2,"maxItems":2},
                          {"type":"null"}]},
        "color":{"enum":["red","green",null,1,true,{"x":[1,2]}]}},
       "required":["kind","shape","color"],"additionalProperties":false})",
    R"({"type":"object","properties":{"d":{"type":"string","format":"date"},"t":{"type":"string","format":"time"},
        "dt":{"type":"string","format":"date-time"},"e":{"type":"string","format":"email"},
        "u":{"type":"string","format":"uuid"},"ip":{"type":"string","format":"ipv4"}},
       "required":["d","t","dt","e","u","ip"],"additionalProperties":false})",
    R"({"type":"array","items":{"type":"string","maxLength":6},"minItems":2,"maxItems":4})",
    R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"},"c":{"type":"string","maxLength":3}}})",
    R"({"enum":["yes","no","maybe \"so\""]})",
    R"({"type":"integer","minimum":-20,"maximum":1500})",
    R"({"type":"array","prefixItems":[{"type":"integer"},{"type":"string","maxLength":4},{"type":"boolean"}],"items":false,"minItems":1})",
    R"({"definitions":{"p":{"type":"number","exclusiveMinimum":0.5,"exclusiveMaximum":2}},
       "type":"object","properties":{"x":{"$ref":"#/definitions/p"},"y":{"anyOf":[{"$ref":"#/definitions/p"},{"type":"string","pattern":"^[a-c]+$"}]}},
       "required":["x","y"],"additionalProperties":false})",
    R"({"type":"object","additionalProperties":{"type":"integer","maximum":3}})",
    R"({"type":"object"})",
};

TEST(StructuredJsonSchema, RandomWalksValidateWithAjv) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed (scripts/test.sh runs npm ci in tests/structured)";
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  ConstraintCache cache(vocab);
  nlohmann::json in = nlohmann::json::array();
  size_t finished = 0, total = 0;
  std::vector<double> times;
  for (size_t i = 0; i < kSchemas.size(); ++i) {
    auto c = cache.get(ConstraintKind::kJsonSchema, kSchemas[i]);
    ASSERT_TRUE(c.ok()) << kSchemas[i] << ": " << c.status().message();
    nlohmann::json texts = nlohmann::json::array();
    for (uint64_t seed = 0; seed < 16; ++seed) {
      test::Walk w = test::random_walk(*c, seed * 7919 + i);
      ASSERT_FALSE(::testing::Test::HasFailure()) << kSchemas[i];
      ++total;
      if (!w.finished) continue;
      ++finished;
      texts.push_back(w.text);
      times.insert(times.end(), w.mask_us.begin(), w.mask_us.end());
    }
    in.push_back({{"schema", nlohmann::json::parse(kSchemas[i])}, {"texts", texts}});
  }
  std::string err;
  auto out = test::run_oracle("ajv", in, &err);
  ASSERT_TRUE(out) << err;
  size_t validated = 0;
  for (size_t i = 0; i < kSchemas.size(); ++i) {
    const auto& o = (*out)[i];
    ASSERT_TRUE(o["error"].is_null()) << o["error"];
    for (size_t k = 0; k < o["results"].size(); ++k) {
      const auto& r = o["results"][k];
      EXPECT_TRUE(r["parsed"].get<bool>() && r["valid"].get<bool>())
          << "schema " << i << " output " << in[i]["texts"][k] << ": " << r["errors"];
      ++validated;
    }
  }
  // Most walks must finish, or the validation says little.
  EXPECT_GE(finished * 4, total * 3) << finished << " of " << total << " walks finished";
  std::sort(times.begin(), times.end());
  std::printf("json schema: %zu outputs valid by ajv (%zu walks); fill_mask over %zu calls: median %.1f us, "
              "p90 %.1f us, max %.1f us (8k vocabulary, per-state tables built on first use)\n",
              validated, total, times.size(), times[times.size() / 2], times[times.size() * 9 / 10], times.back());
  for (size_t i = 0; i < in.size(); ++i) {
    if (!in[i]["texts"].empty()) std::printf("  schema %zu e.g. %s\n", i, in[i]["texts"][0].dump().c_str());
  }
}

// After a prefix, the bytes the constraint takes are exactly those after which some
// completion is valid JSON for the schema (ajv on every completion of a small alphabet).
TEST(StructuredJsonSchema, RefusedBytesAreExactlyTheInvalidOnes) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed";
  struct Probe {
    std::string schema, prefix, alphabet;
    int max_len;
    std::vector<std::string> extra;  // completions beyond the alphabet's
  };
  const std::vector<Probe> probes = {
      {R"({"type":"object","properties":{"a":{"type":"integer","minimum":10,"maximum":25}},"required":["a"],"additionalProperties":false})",
       R"({"a":)", "0123456789 }", 3, {}},
      {R"({"type":"string","enum":["red","green","blue"]})", R"("gr)", "bdeglnru\"", 3, {}},
      {R"({"type":"string","pattern":"^[A-Z]{2}-\\d{2}$"})", R"("AB)", "AB-12\"", 3, {}},
      {R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"}},"required":["b"],"additionalProperties":false})",
       R"({"a":1,)", "", 0, {R"("b":true})", R"(b":true})", R"(":true})", R"(:true})", R"( "b":true})", R"("a":2,"b":true})"}},
  };
  auto vocab = test::tiny_vocab();
  ASSERT_TRUE(vocab);
  JsonOptions opts;
  opts.max_whitespace = 8;
  nlohmann::json in = nlohmann::json::array();
  std::vector<std::vector<int>> ours;  // [probe][byte] 1 = taken
  for (const Probe& p : probes) {
    auto g = json_schema_grammar(p.schema, opts);
    ASSERT_TRUE(g.ok()) << g.status().message();
    auto cg = compile(*g);
    ASSERT_TRUE(cg.ok()) << cg.status().message();
    EarleyParser parser(*cg);
    for (char ch : p.prefix) ASSERT_TRUE(parser.push_byte(static_cast<uint8_t>(ch))) << p.prefix;
    std::vector<std::string> suffixes = {""};
    for (int len = 1; len <= p.max_len; ++len) {
      std::vector<std::string> more;
      for (const auto& s : suffixes) {
        if (static_cast<int>(s.size()) != len - 1) continue;
        for (char a : p.alphabet) more.push_back(s + a);
      }
      suffixes.insert(suffixes.end(), more.begin(), more.end());
    }
    suffixes.insert(suffixes.end(), p.extra.begin(), p.extra.end());
    nlohmann::json texts = nlohmann::json::array();
    std::vector<int> taken;
    for (int b = 1; b < 128; ++b) {
      const bool ok = parser.push_byte(static_cast<uint8_t>(b));
      if (ok) parser.pop_bytes(1);
      taken.push_back(ok);
      for (const auto& s : suffixes) texts.push_back(p.prefix + static_cast<char>(b) + s);
    }
    ours.push_back(taken);
    in.push_back({{"schema", nlohmann::json::parse(p.schema)}, {"texts", texts}});
  }
  std::string err;
  auto out = test::run_oracle("ajv", in, &err);
  ASSERT_TRUE(out) << err;
  for (size_t i = 0; i < probes.size(); ++i) {
    const auto& results = (*out)[i]["results"];
    const size_t per_byte = results.size() / 127;
    int taken = 0;
    for (int b = 1; b < 128; ++b) {
      bool viable = false;
      for (size_t k = 0; k < per_byte; ++k) {
        const auto& r = results[(b - 1) * per_byte + k];
        viable = viable || (r["parsed"].get<bool>() && r["valid"].get<bool>());
      }
      EXPECT_EQ(ours[i][b - 1] != 0, viable) << "schema " << probes[i].schema << " prefix " << probes[i].prefix
                                             << " byte " << b << " ('" << static_cast<char>(b) << "')";
      taken += viable;
    }
    EXPECT_GT(taken, 0);
  }
}

TEST(StructuredJsonSchema, UnsupportedKeywordsAreNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"type":"string","contentSchema":{}})", "\"contentSchema\" is not supported"},
      {R"({"type":"array","uniqueItems":true})", "uniqueItems"},
      {R"({"type":"number","multipleOf":3})", "\"multipleOf\" is not supported"},
      {R"({"type":"string","format":"hostname"})", "format \"hostname\" is not supported"},
      {R"({"type":"string","pattern":"(a)\\1"})", "backreferences"},
      {R"({"$ref":"http://example.com/s.json"})", "only $ref within the document"},
      {R"({"$ref":"#/$defs/missing"})", "$ref target not found"},
      {R"({"type":"integer","minimum":5,"maximum":4})", "no integer lies within the bounds"},
      {R"({"type":"wat"})", "unknown type"},
      {R"({"type":"object",)", "not valid JSON"},
      {R"(false)", "admits no value"},
      {R"({"allOf":[{"type":"string"},{"minLength":2}]})", "allOf"},
  };
  for (const auto& [schema, words] : cases) {
    auto g = json_schema_grammar(schema);
    ASSERT_FALSE(g.ok()) << schema;
    EXPECT_HAS(g.status().message(), words);
  }
  // Deep nesting is bounded, not a stack overflow.
  std::string deep;
  for (int i = 0; i < 5000; ++i) deep += R"({"type":"array","items":)";
  deep += "{}";
  for (int i = 0; i < 5000; ++i) deep += "}";
  auto g = json_schema_grammar(deep);
  ASSERT_FALSE(g.ok());
  EXPECT_HAS(g.status().message(), "nested more than");
}

TEST(StructuredJsonSchema, WhitespacePolicyAndNullable) {
  JsonOptions compact;
  compact.max_whitespace = 0;
  auto accepts = [](const Grammar& g, const std::string& text) {
    auto cg = compile(g);
    EXPECT_TRUE(cg.ok()) << cg.status().message();
    EarleyParser p(*cg);
    for (char ch : text) {
      if (!p.push_byte(static_cast<uint8_t>(ch))) return false;
    }
    return p.accepting();
  };
  const std::string schema = R"({"type":"object","properties":{"a":{"type":"integer","nullable":true}},"required":["a"]})";
  auto g0 = json_schema_grammar(schema, compact);
  auto g8 = json_schema_grammar(schema);
  ASSERT_TRUE(g0.ok() && g8.ok());
  EXPECT_TRUE(accepts(*g0, R"({"a":1})"));
  EXPECT_TRUE(accepts(*g0, R"({"a":null})"));
  EXPECT_FALSE(accepts(*g0, R"({"a": 1})"));
  EXPECT_TRUE(accepts(*g8, "{\n  \"a\": 1\n}"));
  EXPECT_TRUE(accepts(*g8, std::string(8, ' ') + R"({"a":1})"));
  EXPECT_FALSE(accepts(*g8, std::string(9, ' ') + R"({"a":1})"));
  EXPECT_FALSE(accepts(*g8, R"({"a":1,"b":2})"));  // strict: no other properties
}

}  // namespace
}  // namespace philora::structured
