// Structured output through the engine (issue 21 §3) on the embedded model
// (models/philora-tiny, CPU backend): every output of a suite of schemas under
// several sampling seeds parses and validates with ajv 8 + ajv-formats
// (independent), regex outputs match node's RegExp, choice outputs are one of
// the choices; greedy output under json_object equals the unconstrained greedy
// output where that is already a JSON object; constrained and unconstrained
// sequences with adapters share a batch (the unconstrained ones unchanged);
// speculative decoding, preemption and n > 1 keep the outputs valid and the same.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/engine_rig.h"
#include "model/medusa.h"
#include "model/weights.h"
#include "structured/matcher.h"
#include "structured/oracle.h"
#include "tokenizer/tokenizer.h"

namespace philora::structured {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
const fs::path kModel = PHILORA_TINY_MODEL;
const fs::path kAdapters = kModel.parent_path() / "adapters";

struct Tiny {
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::unique_ptr<kv::KvCache> kv;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<ConstraintCache> cache;
  std::unique_ptr<engine::Engine> engine;

  explicit Tiny(engine::EngineConfig config = {}, int64_t pages = 1024) {
    config.wait_for_adapter_loads = true;  // a schedule independent of the disk
    backend = std::make_unique<CpuBackend>(2, config.step_graphs);
    model = philora::test::load_model(kModel, *backend);
    slots = std::make_unique<lora::AdapterSlots>(*backend, model->config(), 3);
    store = std::make_unique<lora::AdapterStore>(model->config(), *slots, lora::StoreOptions{});
    for (const char* a : {"kjv", "devil", "jargon"}) store->register_dir(a, (kAdapters / a).string());
    kv = std::make_unique<kv::KvCache>(*backend, model->config().num_hidden_layers, pages, 16,
                                       model->config().num_key_value_heads,
                                       model->config().head_dim);
    auto t = tokenizer::Tokenizer::from_model_dir(kModel.string());
    EXPECT_TRUE(t.ok()) << t.status().message();
    tok = std::move(*t);
    cache = std::make_unique<ConstraintCache>(TokenVocabulary::from_tokenizer(*tok));
    engine = std::make_unique<engine::Engine>(*model, *kv, store.get(), config, tok.get());
  }

  std::shared_ptr<const CompiledConstraint> constraint(ConstraintKind kind, const std::string& text) {
    auto c = cache->get(kind, text);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.ok() ? *c : nullptr;
  }

  engine::Request request(const std::string& id, const std::string& prompt, int64_t max_new) {
    engine::Request r;
    r.id = id;
    r.prompt = tok->encode(prompt);
    r.max_new_tokens = max_new;
    return r;
  }
};

struct Out {
  std::vector<int32_t> tokens;
  std::string text;
  engine::FinishReason finish = engine::FinishReason::none;
  std::string error;
};

// Runs the requests to the end; outputs by id (candidate i of a request with n > 1: "id#i").
std::map<std::string, Out> run(engine::Engine& e, const std::vector<engine::Request>& requests) {
  for (const engine::Request& r : requests) {
    const Status s = e.add_request(r);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  std::map<std::string, Out> outs;
  for (int guard = 0; e.has_work() && guard < 100000; ++guard)
    for (engine::StepOutput& o : e.step()) {
      Out& out = outs[o.index == 0 ? o.id : o.id + "#" + std::to_string(o.index)];
      out.tokens.insert(out.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      out.text += o.text;
      if (o.finished()) out.finish = o.finish;
      if (!o.error.empty()) out.error = o.error;
    }
  return outs;
}

engine::SamplingParams sampled(uint64_t seed, float temperature = 1.0f, float top_p = 1.0f) {
  engine::SamplingParams p;
  p.greedy = false;
  p.temperature = temperature;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

// Schemas whose outputs are bounded (maxLength, maxItems, bounded numbers): every sampled
// output must end with the eos the constraint allows, well within max_new_tokens.
const std::vector<std::string> kSchemas = {
    // nested objects, optional properties, enums with escapes and Unicode
    R"({"type":"object","properties":{
        "name":{"type":"string","minLength":1,"maxLength":10},
        "age":{"type":"integer","minimum":0,"maximum":130},
        "tags":{"type":"array","items":{"enum":["a","c d","é","日本","say \"hi\"","tab\there"]},"minItems":1,"maxItems":3},
        "address":{"type":"object","properties":{"city":{"type":"string","maxLength":8},
                   "zip":{"type":"string","pattern":"^\\d{5}$"}},"required":["city"],"additionalProperties":false},
        "active":{"type":"boolean"}},
       "required":["name","age","tags"],"additionalProperties":false})",
    // $ref / $defs, recursion bounded by maxItems and depth through an enum leaf
    R"({"$defs":{"leaf":{"type":"object","properties":{"v":{"type":"integer","minimum":-50,"maximum":50}},"required":["v"],"additionalProperties":false},
        "node":{"type":"object","properties":{"v":{"type":"integer","minimum":-9,"maximum":9},
        "kids":{"type":"array","items":{"$ref":"#/$defs/leaf"},"maxItems":2}},
        "required":["v","kids"],"additionalProperties":false}},
       "type":"array","items":{"$ref":"#/$defs/node"},"minItems":1,"maxItems":2})",
    // numbers with bounds, anyOf, const
    R"({"type":"object","properties":{"kind":{"const":"circle"},
        "r":{"type":"number","exclusiveMinimum":0,"maximum":10.5},
        "shape":{"anyOf":[{"type":"array","items":{"type":"integer","minimum":-5,"maximum":5},"minItems":2,"maxItems":2},
                          {"type":"null"}]},
        "color":{"enum":["red","green",null,1,true]}},
       "required":["kind","r","shape","color"],"additionalProperties":false})",
    // strings: escapes and Unicode inside the value (maxLength in code points)
    R"({"type":"object","properties":{"s":{"type":"string","maxLength":12},"t":{"type":"string","minLength":2,"maxLength":5}},
       "required":["s","t"],"additionalProperties":false})",
    // formats
    R"({"type":"object","properties":{"d":{"type":"string","format":"date"},"ip":{"type":"string","format":"ipv4"}},
       "required":["d","ip"],"additionalProperties":false})",
};

const char* const kPrompts[] = {"The answer, as JSON:", "Once upon a time", "User record:"};

// ajv on each (schema, text): true when every text parses and validates; the failures named.
void expect_valid(const std::vector<std::pair<std::string, std::vector<std::string>>>& cases) {
  json in = json::array();
  for (const auto& [schema, texts] : cases)
    in.push_back({{"schema", json::parse(schema)}, {"texts", texts}});
  std::string error;
  const auto out = test::run_oracle("ajv", in, &error);
  ASSERT_TRUE(out) << error;
  ASSERT_EQ(out->size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE((*out)[i]["error"].is_null()) << (*out)[i]["error"];
    for (size_t k = 0; k < cases[i].second.size(); ++k) {
      const json& r = (*out)[i]["results"][k];
      EXPECT_TRUE(r["parsed"].get<bool>() && r["valid"].get<bool>())
          << "schema " << i << " output " << json(cases[i].second[k]).dump() << ": " << r["errors"];
    }
  }
}

TEST(StructuredEngine, SchemaSuiteUnderSamplingValidatesWithAjv) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed (scripts/test.sh runs npm ci in tests/structured)";
  Tiny t;
  std::vector<engine::Request> reqs;
  for (size_t s = 0; s < kSchemas.size(); ++s) {
    const auto c = t.constraint(ConstraintKind::kJsonSchema, kSchemas[s]);
    for (uint64_t seed = 0; seed < 4; ++seed) {
      engine::Request r = t.request(fmt::format("s{}-{}", s, seed), kPrompts[seed % 3], 400);
      r.sampling = sampled(1000 * s + seed, seed == 3 ? 1.5f : 1.0f, seed == 2 ? 0.9f : 1.0f);
      r.constraint = c;
      reqs.push_back(std::move(r));
    }
  }
  const auto outs = run(*t.engine, reqs);
  // Decode steps replayed step graphs, whose fixed mask buffer the masks went through;
  // the prompt steps (short prompts) replayed gathering graphs, masks included.
  EXPECT_GT(t.engine->runner_stats().graph_steps, 0);
  EXPECT_GT(t.engine->runner_stats().graph_gather_steps, 0);
  std::vector<std::pair<std::string, std::vector<std::string>>> cases;
  for (size_t s = 0; s < kSchemas.size(); ++s) {
    cases.push_back({kSchemas[s], {}});
    for (uint64_t seed = 0; seed < 4; ++seed) {
      const Out& o = outs.at(fmt::format("s{}-{}", s, seed));
      EXPECT_EQ(o.finish, engine::FinishReason::eos) << "schema " << s << " seed " << seed << ": " << o.text;
      EXPECT_TRUE(o.error.empty()) << o.error;
      cases.back().second.push_back(o.text);
    }
  }
  expect_valid(cases);
}

TEST(StructuredEngine, RegexGrammarAndChoiceOutputs) {
  if (!test::have_node()) GTEST_SKIP() << "node is not installed";
  Tiny t;
  const std::vector<std::string> patterns = {R"([a-z]{2,8}@[a-z]{2,6}\.(com|org))",
                                             R"(\d{3}-\d{4})",
                                             R"((yes|no|maybe)( [A-Z][a-z]{1,5}){0,3})",
                                             R"([\u00e9\u65e5a-c ]{1,6}!)"};
  std::vector<engine::Request> reqs;
  for (size_t p = 0; p < patterns.size(); ++p)
    for (uint64_t seed = 0; seed < 3; ++seed) {
      engine::Request r = t.request(fmt::format("re{}-{}", p, seed), kPrompts[seed], 64);
      r.sampling = sampled(seed * 7 + p);
      r.constraint = t.constraint(ConstraintKind::kRegex, patterns[p]);
      reqs.push_back(std::move(r));
    }
  const std::vector<std::string> choices = {"red", "green apple", "日本"};
  for (uint64_t seed = 0; seed < 3; ++seed) {
    engine::Request r = t.request(fmt::format("choice{}", seed), kPrompts[seed], 16);
    r.sampling = sampled(seed);
    r.constraint = t.constraint(ConstraintKind::kChoice, json(choices).dump());
    reqs.push_back(std::move(r));
  }
  // A GBNF grammar: comma-separated lists of 1-3 small words, then a period.
  const std::string gbnf = "root ::= word (\", \" word){0,2} \".\"\nword ::= [a-z]{1,5}\n";
  for (uint64_t seed = 0; seed < 3; ++seed) {
    engine::Request r = t.request(fmt::format("gbnf{}", seed), kPrompts[seed], 64);
    r.sampling = sampled(seed + 50);
    r.constraint = t.constraint(ConstraintKind::kGrammar, gbnf);
    reqs.push_back(std::move(r));
  }
  const auto outs = run(*t.engine, reqs);
  json in = json::array();
  for (size_t p = 0; p < patterns.size(); ++p) {
    json strings = json::array();
    for (uint64_t seed = 0; seed < 3; ++seed) {
      const Out& o = outs.at(fmt::format("re{}-{}", p, seed));
      EXPECT_EQ(o.finish, engine::FinishReason::eos) << o.text;
      strings.push_back(o.text);
    }
    in.push_back({{"pattern", patterns[p]}, {"strings", strings}});
  }
  // The grammar's language as an ECMA regex, for node to check.
  json gstrings = json::array();
  for (uint64_t seed = 0; seed < 3; ++seed) gstrings.push_back(outs.at(fmt::format("gbnf{}", seed)).text);
  in.push_back({{"pattern", "[a-z]{1,5}(, [a-z]{1,5}){0,2}\\."}, {"strings", gstrings}});
  std::string error;
  const auto res = test::run_oracle("regex", in, &error);
  ASSERT_TRUE(res) << error;
  for (size_t i = 0; i < in.size(); ++i)
    for (size_t k = 0; k < in[i]["strings"].size(); ++k)
      EXPECT_TRUE((*res)[i]["full"][k].get<bool>())
          << in[i]["pattern"] << " vs " << in[i]["strings"][k];
  for (uint64_t seed = 0; seed < 3; ++seed) {
    const Out& o = outs.at(fmt::format("choice{}", seed));
    EXPECT_EQ(o.finish, engine::FinishReason::eos);
    EXPECT_NE(std::find(choices.begin(), choices.end(), o.text), choices.end()) << o.text;
  }
}

// The embedded model writes English and no JSON, so the case is built: a golden fixture's
// random model (200 ids, adapters a, b) under a tokenizer whose ids are JSON pieces (complete
// objects, openers, values, closers, continuations). Over 256 random prompts, each one's
// unconstrained greedy output is cut to its longest prefix of whole tokens that is a JSON
// object (nlohmann parses it); json_object's greedy output for that many tokens must be the
// same tokens. At least a few cases of 2 tokens or more must occur.
std::string json_pieces_tokenizer(int32_t vocab) {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", "{", "}", " ", "\n", "junk"};
  // Complete objects, openers, values, value-closers and continuations, in turn.
  for (int32_t i = 0; int32_t(pieces.size()) < vocab; ++i) {
    switch (i % 5) {
      case 0: pieces.push_back(fmt::format("{{\"a{}\":{}}}", i, i)); break;
      case 1: pieces.push_back(fmt::format("{{\"k{}\":", i)); break;
      case 2: pieces.push_back(fmt::format("\"v{}\"", i)); break;
      case 3: pieces.push_back(fmt::format("{}}}", i)); break;
      default: pieces.push_back(fmt::format(",\"c{}\":", i)); break;
    }
  }
  json v = json::object();
  for (int32_t id = 0; id < vocab; ++id) v[pieces[size_t(id)]] = id;
  json added = json::array();
  for (int32_t id = 0; id < 3; ++id)
    added.push_back({{"id", id}, {"content", pieces[size_t(id)]}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  const json t = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
                  {"added_tokens", added}, {"normalizer", nullptr}, {"pre_tokenizer", nullptr},
                  {"post_processor", nullptr}, {"decoder", {{"type", "Fuse"}}},
                  {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"},
                             {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                             {"fuse_unk", true}, {"byte_fallback", false}, {"vocab", v},
                             {"merges", json::array()}}}};
  return t.dump();
}

TEST(StructuredEngine, GreedyJsonObjectEqualsUnconstrainedWhereThatIsJson) {
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";
  CpuBackend backend(2);
  auto cfg = model::load_config((dir / "model").string());
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  auto tensors = io::TensorSet::open_model_dir((dir / "model").string());
  ASSERT_TRUE(tensors.ok());
  auto weights = model::load_weights(*tensors, *cfg, backend);
  ASSERT_TRUE(weights.ok());
  model::Phi3ForCausalLM model(*cfg, std::move(*weights), backend);
  lora::AdapterSlots slots(backend, model.config(), 2);
  lora::AdapterStore store(model.config(), slots, lora::StoreOptions{});
  for (const char* a : {"a", "b"}) store.register_dir(a, (dir / "adapters" / a).string());
  kv::KvCache kv(backend, model.config().num_hidden_layers, 2048, 4,
                 model.config().num_key_value_heads, model.config().head_dim);
  auto tok = tokenizer::Tokenizer::from_json_string(
      json_pieces_tokenizer(int32_t(model.config().vocab_size)));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  ConstraintCache cache(TokenVocabulary::from_tokenizer(**tok));
  auto object = cache.get(ConstraintKind::kJsonObject, "");
  ASSERT_TRUE(object.ok());
  engine::EngineConfig config;
  config.wait_for_adapter_loads = true;
  engine::Engine e(model, kv, &store, config, tok->get());

  std::mt19937 rng(7);
  std::vector<engine::Request> free;
  for (int i = 0; i < 256; ++i) {
    engine::Request r;
    r.id = fmt::format("p{}", i);
    for (int k = 0; k < 5 + i % 7; ++k) r.prompt.push_back(int32_t(3 + rng() % 197));
    r.max_new_tokens = 12;
    if (i % 3) r.adapter = i % 3 == 1 ? "a" : "b";
    free.push_back(std::move(r));
  }
  const auto u = run(e, free);
  std::vector<engine::Request> constrained;
  std::map<std::string, std::vector<int32_t>> expected;
  int long_cases = 0;
  for (const engine::Request& r : free) {
    const std::vector<int32_t>& tokens = u.at(r.id).tokens;
    // The longest prefix of whole tokens whose text (special tokens kept: json_object never
    // writes one) is a JSON object, or is one followed by the model's eos (id 2).
    size_t k = 0;
    for (size_t n = 1; n <= tokens.size(); ++n) {
      const size_t body = n - (tokens[n - 1] == 2 ? 1 : 0);
      const json j = json::parse(
          (*tok)->decode(std::vector<int32_t>(tokens.begin(), tokens.begin() + int64_t(body)), false),
          nullptr, false);
      if (!j.is_discarded() && j.is_object()) k = n;
    }
    if (k == 0) continue;
    long_cases += k >= 2;
    engine::Request c = r;
    c.id = r.id + "-json";
    c.max_new_tokens = int64_t(k);
    c.constraint = *object;
    expected[c.id] = std::vector<int32_t>(tokens.begin(), tokens.begin() + int64_t(k));
    constrained.push_back(std::move(c));
  }
  EXPECT_GE(long_cases, 2) << "too few unconstrained outputs of 2 or more tokens are JSON: the "
                              "test compares little";
  ASSERT_GE(constrained.size(), 8u);
  const auto outs = run(e, constrained);
  for (const auto& [id, want] : expected) EXPECT_EQ(outs.at(id).tokens, want) << id;
  std::printf("%zu of 256 unconstrained greedy outputs start with a JSON object (%d of 2+ tokens)\n",
              expected.size(), long_cases);
}

// Constrained and unconstrained sequences, with adapters, in one batch: the unconstrained ones
// give what they give alone, the constrained ones validate.
TEST(StructuredEngine, MixedBatchWithAdapters) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed";
  Tiny t;
  const char* const adapters[] = {"", "kjv", "devil", "jargon"};
  auto plain = [&](int i) {
    engine::Request r = t.request(fmt::format("free{}", i), kPrompts[i % 3], 24);
    if (*adapters[i % 4]) r.adapter = adapters[i % 4];
    if (i % 2) r.sampling = sampled(77 + uint64_t(i));
    return r;
  };
  std::map<std::string, Out> alone;
  for (int i = 0; i < 4; ++i) alone.merge(run(*t.engine, {plain(i)}));
  std::vector<engine::Request> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(plain(i));
  for (int i = 0; i < 4; ++i) {
    engine::Request r = t.request(fmt::format("json{}", i), kPrompts[(i + 1) % 3], 400);
    if (*adapters[(i + 1) % 4]) r.adapter = adapters[(i + 1) % 4];
    r.sampling = sampled(500 + uint64_t(i));
    r.constraint = t.constraint(ConstraintKind::kJsonSchema, kSchemas[size_t(i)]);
    reqs.push_back(std::move(r));
  }
  const auto outs = run(*t.engine, reqs);
  for (int i = 0; i < 4; ++i) {
    const std::string id = fmt::format("free{}", i);
    EXPECT_EQ(outs.at(id).tokens, alone.at(id).tokens) << id;
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> cases;
  for (int i = 0; i < 4; ++i) {
    const Out& o = outs.at(fmt::format("json{}", i));
    EXPECT_EQ(o.finish, engine::FinishReason::eos) << o.text;
    cases.push_back({kSchemas[size_t(i)], {o.text}});
  }
  expect_valid(cases);
}

// Four requests under kSchemas[2] for a prompt of repeated records (drafts find matches in it),
// ids `prefix`0 to `prefix`3, the odd ones sampled with seed `seed` + i.
std::vector<engine::Request> record_requests(Tiny& t, const std::string& prefix, int64_t max_new,
                                             uint64_t seed) {
  const std::string prompt =
      "{\"kind\": \"circle\", \"r\": 2, \"shape\": null, \"color\": \"red\"}\n{\"kind\": "
      "\"circle\", \"r\": 2, \"shape\": null, \"color\": \"red\"}\n";
  std::vector<engine::Request> reqs;
  for (uint64_t i = 0; i < 4; ++i) {
    engine::Request r = t.request(prefix + std::to_string(i), prompt, max_new);
    if (i % 2) r.sampling = sampled(seed + i);
    r.constraint = t.constraint(ConstraintKind::kJsonSchema, kSchemas[2]);
    reqs.push_back(std::move(r));
  }
  return reqs;
}

// Speculative decoding (n-gram drafts, masked verification rows) changes nothing; neither do
// preemptions (a small KV cache), several candidates (n = 3, each its own matcher), nor
// running every step eagerly instead of replaying step graphs.
TEST(StructuredEngine, SpeculationPreemptionAndCandidates) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed";
  auto requests = [](Tiny& t) {
    std::vector<engine::Request> reqs = record_requests(t, "r", 300, 900);
    reqs[3].n = 3;
    return reqs;
  };
  Tiny base;
  const auto ref = run(*base.engine, requests(base));
  engine::EngineConfig spec;
  spec.speculate_ngram = 4;
  Tiny s(spec);
  const auto with_spec = run(*s.engine, requests(s));
  EXPECT_GT(s.engine->stats().spec_draft_tokens, 0) << "no drafts: speculation was not exercised";
  EXPECT_GT(s.engine->stats().spec_accepted_tokens, 0);
  Tiny small({}, /*pages=*/40);  // 40 pages of 16 tokens for 6 sequences of ~100 + up to 300 tokens
  const auto preempted = run(*small.engine, requests(small));
  EXPECT_GT(small.engine->stats().preemptions, 0) << "no preemption: the cache is too large";
  engine::EngineConfig eager_config;
  eager_config.step_graphs = false;
  Tiny eager(eager_config);  // every step op by op: the masks through the eager staging
  const auto eager_outs = run(*eager.engine, requests(eager));
  EXPECT_EQ(eager.engine->runner_stats().graph_steps, 0);
  EXPECT_GT(base.engine->runner_stats().graph_steps, 0);
  ASSERT_EQ(ref.size(), 6u);
  std::vector<std::pair<std::string, std::vector<std::string>>> cases{{kSchemas[2], {}}};
  for (const auto& [id, o] : ref) {
    EXPECT_EQ(o.finish, engine::FinishReason::eos) << id << ": " << o.text;
    EXPECT_EQ(with_spec.at(id).tokens, o.tokens) << id;
    EXPECT_EQ(preempted.at(id).tokens, o.tokens) << id;
    EXPECT_EQ(eager_outs.at(id).tokens, o.tokens) << id;
    cases[0].second.push_back(o.text);
  }
  expect_valid(cases);
}

// Medusa drafts under constraints: echo heads (zero blocks over the model's
// lm_head, written here in LoRAX's layout: each head proposes the model's own
// next token) give drafts that the constraint cuts at the first token it
// refuses; what is left is verified under one mask per row. Outputs, greedy
// and seeded, with and without an adapter, are the plain run's.
TEST(StructuredEngine, MedusaDraftsChangeNothing) {
  auto requests = [](Tiny& t) {
    std::vector<engine::Request> reqs = record_requests(t, "m", 200, 700);
    reqs[2].adapter = "kjv";
    return reqs;
  };
  Tiny base;
  const auto ref = run(*base.engine, requests(base));
  engine::EngineConfig config;
  config.speculate_medusa = 3;
  config.wait_for_adapter_loads = true;
  Tiny m(config);
  const fs::path dir =
      fs::temp_directory_path() / ("philora_medusa_structured_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream(dir / "config.json") << R"({"medusa_num_heads": 3, "medusa_num_layers": 1})";
    const int64_t h = m.model->config().hidden_size;
    std::vector<float> zeros(size_t(h * h), 0.0f);
    std::vector<std::pair<std::string, Tensor>> t;
    for (const char* i : {"0", "1", "2"}) {
      t.push_back({std::string(i) + ".0.linear.weight", Tensor(zeros.data(), DType::f32, {h, h})});
      t.push_back({std::string(i) + ".0.linear.bias", Tensor(zeros.data(), DType::f32, {h})});
    }
    ASSERT_TRUE(io::write_safetensors((dir / "medusa_lm_head.safetensors").string(), t).ok());
  }
  auto heads = model::MedusaHeads::load(dir.string(), m.model->config(), *m.backend);
  fs::remove_all(dir);
  ASSERT_TRUE(heads.ok()) << heads.status().message();
  auto set = std::make_shared<engine::MedusaSet>();
  set->base = std::make_shared<const model::MedusaHeads>(std::move(*heads));
  config.medusa = set;
  m.engine = std::make_unique<engine::Engine>(*m.model, *m.kv, m.store.get(), config, m.tok.get());
  const auto with_medusa = run(*m.engine, requests(m));
  EXPECT_GT(m.engine->stats().spec_draft_tokens, 0) << "no drafts: Medusa was not exercised";
  std::printf("[ medusa structured ] drafted %lld accepted %lld\n",
              (long long)m.engine->stats().spec_draft_tokens,
              (long long)m.engine->stats().spec_accepted_tokens);
  ASSERT_EQ(ref.size(), 4u);
  for (const auto& [id, o] : ref) {
    EXPECT_EQ(with_medusa.at(id).tokens, o.tokens) << id;
    EXPECT_EQ(with_medusa.at(id).text, o.text) << id;
  }
}

// Bans that leave the constraint no token end the request with an error, never a crash;
// a constraint compiled for a larger vocabulary than the model's is refused at add_request.
TEST(StructuredEngine, NoTokenLeftIsAnErrorAndVocabularyMismatchIsRefused) {
  Tiny t;
  engine::Request r = t.request("banned", "Hello", 8);
  r.constraint = t.constraint(ConstraintKind::kChoice, R"(["x"])");
  const auto x = t.tok->encode("x");
  ASSERT_EQ(x.size(), 1u);
  r.sampling.logit_bias[x[0]] = -INFINITY;
  // logit_bias must be finite at the API; the engine's bans use -inf: ban through bad_words.
  r.sampling.logit_bias.clear();
  r.sampling.bad_words = {{x[0]}};
  const auto outs = run(*t.engine, {r});
  EXPECT_EQ(outs.at("banned").finish, engine::FinishReason::invalid_request);
  EXPECT_NE(outs.at("banned").error.find("no token can continue"), std::string::npos)
      << outs.at("banned").error;

  std::vector<std::optional<std::string>> bytes(size_t(t.model->config().vocab_size) + 40, "a");
  ConstraintCache big(std::make_shared<TokenVocabulary>(std::move(bytes), std::vector<int32_t>{0}));
  auto c = big.get(ConstraintKind::kJsonObject, "");
  ASSERT_TRUE(c.ok());
  engine::Request m = t.request("mismatch", "Hello", 8);
  m.constraint = *c;
  const Status s = t.engine->add_request(m);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("vocabulary"), std::string::npos) << s.message();
}

// The host time of the masks in an engine run (printed, not asserted): per masked token.
TEST(StructuredEngine, MaskTimePerToken) {
  Tiny t;
  std::vector<engine::Request> reqs;
  for (uint64_t i = 0; i < 8; ++i) {
    engine::Request r = t.request(fmt::format("m{}", i), kPrompts[i % 3], 200);
    r.sampling = sampled(i);
    r.constraint = t.constraint(ConstraintKind::kJsonSchema, kSchemas[i % kSchemas.size()]);
    reqs.push_back(std::move(r));
  }
  const auto start = std::chrono::steady_clock::now();
  const auto outs = run(*t.engine, reqs);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int64_t tokens = 0;
  for (const auto& [id, o] : outs) tokens += int64_t(o.tokens.size());
  const engine::MaskStats& m = t.engine->mask_stats();
  ASSERT_GT(m.masks, 0);
  std::printf("masks: %lld filled, %.1f us each on average (fill thread), %.1f us waited for per step "
              "on average; %lld tokens in %.2f s\n",
              (long long)m.masks, 1e6 * m.fill_seconds / double(m.masks),
              1e6 * m.wait_seconds / double(std::max<int64_t>(m.steps, 1)), (long long)tokens, total);
}

}  // namespace
}  // namespace philora::structured
