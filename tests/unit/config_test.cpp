// Phi3Config parsing: real Phi-3 / Phi-3.5 / Phi-4-mini shaped configs, the transformers 5
// spellings, generation_config.json, and one test per error case.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "test_util.h"

namespace philora::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kOrigin = "/models/phi3/config.json";

// microsoft/Phi-3-mini-4k-instruct's config.json, as published.
json phi3_mini_4k() {
  return json::parse(R"({
    "_name_or_path": "Phi-3-mini-4k-instruct",
    "architectures": ["Phi3ForCausalLM"],
    "attention_bias": false,
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"},
    "bos_token_id": 1,
    "embd_pdrop": 0.0,
    "eos_token_id": 32000,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 4096,
    "model_type": "phi3",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096,
    "pad_token_id": 32000,
    "resid_pdrop": 0.0,
    "rms_norm_eps": 1e-05,
    "rope_scaling": null,
    "rope_theta": 10000.0,
    "sliding_window": 2047,
    "tie_word_embeddings": false,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.2",
    "use_cache": true,
    "vocab_size": 32064
  })");
}

std::vector<double> factors(size_t n, double start) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + 0.25 * double(i);
  return v;
}

// Phi-3.5-mini-instruct: 128k context through LongRoPE, 48 = 96 / 2 factors.
json phi35_mini() {
  json j = phi3_mini_4k();
  j["max_position_embeddings"] = 131072;
  j["sliding_window"] = 262144;
  j["rope_scaling"] = {
      {"type", "longrope"}, {"short_factor", factors(48, 1.0)}, {"long_factor", factors(48, 2.0)}};
  return j;
}

// Phi-4-mini-instruct: GQA, partial rotary 0.75 (rotary_dim 96 of head_dim 128), tied.
json phi4_mini() {
  json j = phi35_mini();
  j["vocab_size"] = 200064;
  j["num_attention_heads"] = 24;
  j["num_key_value_heads"] = 8;
  j["partial_rotary_factor"] = 0.75;
  j["tie_word_embeddings"] = true;
  j["bos_token_id"] = 199999;
  j["eos_token_id"] = 199999;
  j["pad_token_id"] = 199999;
  return j;
}

Expected<Phi3Config> parse(const json& j) { return parse_config(j.dump(), kOrigin); }

std::string parse_error(const json& j) {
  auto c = parse(j);
  EXPECT_FALSE(c.ok()) << "config should be refused: " << j.dump();
  return c.status().message();
}

double longrope_factor(double max_pos, double orig) {
  const double s = max_pos / orig;
  return s <= 1 ? 1.0 : std::sqrt(1 + std::log(s) / std::log(orig));
}

// ---- accepted configs ----------------------------------------------------------------------

TEST(Config, Phi3Mini4k) {
  auto c = parse(phi3_mini_4k());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->vocab_size, 32064);
  EXPECT_EQ(c->hidden_size, 3072);
  EXPECT_EQ(c->intermediate_size, 8192);
  EXPECT_EQ(c->num_hidden_layers, 32);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_EQ(c->head_dim, 96);
  EXPECT_EQ(c->rotary_dim(), 96);
  EXPECT_EQ(c->qkv_size(), 3 * 3072);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->original_max_position_embeddings, 4096);
  ASSERT_TRUE(c->sliding_window.has_value());
  EXPECT_EQ(*c->sliding_window, 2047);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, DType::bf16);
  EXPECT_FALSE(c->longrope);
  EXPECT_TRUE(c->short_factor.empty());
  EXPECT_DOUBLE_EQ(c->rope_attention_factor, 1.0);
  EXPECT_EQ(c->bos_token_id, std::optional<int64_t>(1));
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{32000});
  EXPECT_EQ(c->pad_token_id, std::optional<int64_t>(32000));
}

TEST(Config, Phi35MiniLongRope) {
  auto c = parse(phi35_mini());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->longrope);
  EXPECT_EQ(c->short_factor, factors(48, 1.0));
  EXPECT_EQ(c->long_factor, factors(48, 2.0));
  EXPECT_EQ(*c->sliding_window, 262144);
  // s = 131072 / 4096 = 32: sqrt(1 + ln 32 / ln 4096) = 1.1902380714...
  EXPECT_NEAR(c->rope_attention_factor, 1.1902380714238083, 1e-12);
}

TEST(Config, SuAndLegacyYarnAreLongRope) {
  for (const char* type : {"su", "yarn"}) {
    json j = phi35_mini();
    j["rope_scaling"]["type"] = type;
    auto c = parse(j);
    ASSERT_TRUE(c.ok()) << type << ": " << c.status().message();
    EXPECT_TRUE(c->longrope) << type;
    EXPECT_EQ(c->long_factor, factors(48, 2.0));
  }
}

TEST(Config, Phi4MiniPartialRotaryTiedGqa) {
  auto c = parse(phi4_mini());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rotary_dim(), 96);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->qkv_size(), 24 * 128 + 2 * 8 * 128);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{199999});
  EXPECT_EQ(c->short_factor.size(), 48u);
}

TEST(Config, OriginalLengthInsideRopeScaling) {
  json j = phi35_mini();
  j.erase("original_max_position_embeddings");
  j["max_position_embeddings"] = 8192;
  j["rope_scaling"]["original_max_position_embeddings"] = 2048;
  auto c = parse(j);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->original_max_position_embeddings, 2048);
  EXPECT_NEAR(c->rope_attention_factor, longrope_factor(8192, 2048), 1e-12);
  EXPECT_GT(c->rope_attention_factor, 1.05);
}

TEST(Config, OriginalLengthDefaultsLikePhi3Config) {
  // Phi3Config's default original_max_position_embeddings is 4096.
  json j = phi35_mini();
  j.erase("original_max_position_embeddings");
  auto c = parse(j);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->original_max_position_embeddings, 4096);
  EXPECT_NEAR(c->rope_attention_factor, longrope_factor(131072, 4096), 1e-12);
}

TEST(Config, ExplicitAttentionFactorAndShortContext) {
  json j = phi35_mini();
  j["rope_scaling"]["attention_factor"] = 1.5;
  auto c = parse(j);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_DOUBLE_EQ(c->rope_attention_factor, 1.5);

  json k = phi35_mini();
  k["max_position_embeddings"] = 4096;  // s = 1: no scaling of cos/sin
  auto d = parse(k);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_DOUBLE_EQ(d->rope_attention_factor, 1.0);
}

TEST(Config, Transformers5Spelling) {
  json j = phi3_mini_4k();
  j.erase("torch_dtype");
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  auto c = parse(j);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->torch_dtype, DType::f16);
  EXPECT_DOUBLE_EQ(c->rope_theta, 250000.0);
  EXPECT_FALSE(c->longrope);

  json l = phi4_mini();
  l.erase("rope_scaling");
  l.erase("partial_rotary_factor");
  l.erase("original_max_position_embeddings");
  l["rope_parameters"] = {
      {"rope_type", "longrope"},          {"rope_theta", 10000.0},
      {"partial_rotary_factor", 0.75},    {"original_max_position_embeddings", 4096},
      {"short_factor", factors(48, 1.0)}, {"long_factor", factors(48, 3.0)}};
  auto d = parse(l);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_TRUE(d->longrope);
  EXPECT_EQ(d->rotary_dim(), 96);
  EXPECT_EQ(d->long_factor, factors(48, 3.0));
  EXPECT_NEAR(d->rope_attention_factor, longrope_factor(131072, 4096), 1e-12);
}

TEST(Config, DefaultsAndNulls) {
  json j = phi3_mini_4k();
  j.erase("num_key_value_heads");
  j.erase("architectures");  // model_type "phi3" is enough
  j["sliding_window"] = nullptr;
  j["pad_token_id"] = nullptr;
  j["eos_token_id"] = {32000, 32001, 32007};
  j["head_dim"] = 128;  // given explicitly: not hidden / heads
  j["partial_rotary_factor"] = 0.5;
  auto c = parse(j);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rotary_dim(), 64);
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_FALSE(c->pad_token_id.has_value());
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{32000, 32001, 32007}));
}

// ---- refused configs -----------------------------------------------------------------------

TEST(ConfigErrors, WrongArchitecture) {
  json j = phi3_mini_4k();
  j["architectures"] = {"LlamaForCausalLM"};
  const std::string m = parse_error(j);
  EXPECT_HAS(m, kOrigin);
  EXPECT_HAS(m, "LlamaForCausalLM");
  EXPECT_HAS(m, "expected [\"Phi3ForCausalLM\"]");
}

TEST(ConfigErrors, NoArchitectureAndOtherModelType) {
  json j = phi3_mini_4k();
  j.erase("architectures");
  j["model_type"] = "phi";
  const std::string m = parse_error(j);
  EXPECT_HAS(m, kOrigin);
  EXPECT_HAS(m, "model_type is \"phi\"");
  j.erase("model_type");
  EXPECT_HAS(parse_error(j), "model_type is absent");
}

TEST(ConfigErrors, BadJson) {
  auto c = parse_config("{\"vocab_size\": 10,", kOrigin);
  ASSERT_FALSE(c.ok());
  EXPECT_HAS(c.status().message(), kOrigin);
  EXPECT_HAS(c.status().message(), "not valid JSON");
  auto arr = parse_config("[1]", kOrigin);
  ASSERT_FALSE(arr.ok());
  EXPECT_HAS(arr.status().message(), "expected a JSON object, found array");
}

TEST(ConfigErrors, WrongTypes) {
  struct Case {
    const char* key;
    json value;
    const char* expect;
  } cases[] = {
      {"hidden_size", "3072", "field 'hidden_size' must be an integer, found string \"3072\""},
      {"num_key_value_heads", 8.5, "field 'num_key_value_heads' must be an integer"},
      {"rms_norm_eps", "1e-5", "field 'rms_norm_eps' must be a number"},
      {"tie_word_embeddings", 1, "field 'tie_word_embeddings' must be true or false"},
      {"eos_token_id", "a", "field 'eos_token_id' must be an integer or a list of integers"},
      {"sliding_window", "2047", "field 'sliding_window' must be an integer or null"},
      {"rope_scaling", 5, "field 'rope_scaling' must be an object or null"},
      {"architectures", "Phi3ForCausalLM", "field 'architectures' must be a list"},
  };
  for (const Case& c : cases) {
    json j = phi3_mini_4k();
    j[c.key] = c.value;
    const std::string m = parse_error(j);
    EXPECT_HAS(m, kOrigin) << c.key;
    EXPECT_HAS(m, c.expect) << c.key;
  }
}

TEST(ConfigErrors, MissingRequiredField) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"}) {
    json j = phi3_mini_4k();
    j.erase(key);
    const std::string m = parse_error(j);
    EXPECT_HAS(m, kOrigin);
    EXPECT_HAS(m, std::string("missing required field '") + key + "'");
  }
}

TEST(ConfigErrors, FactorListsOfWrongLength) {
  json j = phi35_mini();
  j["rope_scaling"]["short_factor"] = factors(47, 1.0);
  std::string m = parse_error(j);
  EXPECT_HAS(m, kOrigin);
  EXPECT_HAS(m, "short_factor has length 47, expected 48 (rotary_dim / 2 = 96 / 2)");

  json k = phi4_mini();  // rotary_dim 96 of head_dim 128: 64 factors is the classic mistake
  k["rope_scaling"]["long_factor"] = factors(64, 1.0);
  m = parse_error(k);
  EXPECT_HAS(m, "long_factor has length 64, expected 48");
}

TEST(ConfigErrors, MissingOrBadFactors) {
  json j = phi35_mini();
  j["rope_scaling"].erase("long_factor");
  EXPECT_HAS(parse_error(j), "missing required field 'rope_scaling.long_factor'");
  json k = phi35_mini();
  k["rope_scaling"]["short_factor"] = "1.0";
  EXPECT_HAS(parse_error(k), "field 'rope_scaling.short_factor' must be a list of numbers");
  json l = phi35_mini();
  l["rope_scaling"]["short_factor"][5] = 0.0;
  EXPECT_HAS(parse_error(l), "short_factor[5] must be a positive number, found 0");
}

TEST(ConfigErrors, UnsupportedRopeScalingType) {
  for (const char* type : {"linear", "dynamic", "yarn", "llama3"}) {
    json j = phi3_mini_4k();
    j["rope_scaling"] = {{"type", type}, {"factor", 4.0}};  // no LongRoPE factors
    const std::string m = parse_error(j);
    EXPECT_HAS(m, kOrigin);
    EXPECT_HAS(m, std::string("unsupported rope_scaling type ") + type);
  }
  json k = phi3_mini_4k();
  k["rope_scaling"] = {{"factor", 4.0}};
  EXPECT_HAS(parse_error(k), "'rope_scaling' has neither 'type' nor 'rope_type'");
  json l = phi3_mini_4k();
  l["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_HAS(parse_error(l), "unsupported rope_parameters type yarn");
}

TEST(ConfigErrors, ConflictingRopeFields) {
  json j = phi3_mini_4k();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  j.erase("rope_scaling");
  const std::string m = parse_error(j);
  EXPECT_HAS(m, "'rope_theta' is 10000 at the top level but 500000 in 'rope_parameters'");
  json k = phi35_mini();
  k["rope_scaling"]["original_max_position_embeddings"] = 2048;
  EXPECT_HAS(parse_error(k),
             "'original_max_position_embeddings' is 4096 at the top level but 2048");
}

TEST(ConfigErrors, InconsistentSizes) {
  json j = phi3_mini_4k();
  j["num_key_value_heads"] = 5;
  std::string m = parse_error(j);
  EXPECT_HAS(m, kOrigin);
  EXPECT_HAS(m, "num_attention_heads (32) must be a multiple of num_key_value_heads (5)");

  json k = phi3_mini_4k();
  k["head_dim"] = 6;
  k["partial_rotary_factor"] = 0.5;  // rotary_dim 3: odd
  EXPECT_HAS(parse_error(k), "rotary_dim = int(head_dim 6 * partial_rotary_factor 0.5) = 3");

  json l = phi3_mini_4k();
  l["partial_rotary_factor"] = 1.5;
  EXPECT_HAS(parse_error(l), "partial_rotary_factor must be in (0, 1], found 1.5");

  json n = phi3_mini_4k();
  n["intermediate_size"] = 0;
  EXPECT_HAS(parse_error(n), "intermediate_size must be positive, found 0");

  json s = phi3_mini_4k();
  s["sliding_window"] = 0;
  EXPECT_HAS(parse_error(s), "sliding_window must be positive or null, found 0");
}

TEST(ConfigErrors, DtypeActivationAndQuantization) {
  json j = phi3_mini_4k();
  j["torch_dtype"] = "float64";
  std::string m = parse_error(j);
  EXPECT_HAS(m, kOrigin);
  EXPECT_HAS(m, "field 'torch_dtype' is \"float64\"");
  json d = phi3_mini_4k();
  d["dtype"] = "int8";
  EXPECT_HAS(parse_error(d), "field 'dtype' is \"int8\"");
  json a = phi3_mini_4k();
  a["hidden_act"] = "gelu_new";
  EXPECT_HAS(parse_error(a), "hidden_act is \"gelu_new\", expected \"silu\"");
  json q = phi3_mini_4k();
  q["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_HAS(parse_error(q), "quantization_config");
}

TEST(ConfigValidate, ChecksTheStructDirectly) {
  auto c = parse(phi35_mini());
  ASSERT_TRUE(c.ok());
  Phi3Config cfg = *c;
  EXPECT_TRUE(cfg.validate().ok());
  cfg.longrope = false;  // factors without LongRoPE
  EXPECT_FALSE(cfg.validate().ok());
  cfg = *c;
  cfg.long_factor.pop_back();
  EXPECT_HAS(cfg.validate().message(), "long_factor has length 47, expected 48");
  cfg = *c;
  cfg.num_key_value_heads = 0;
  EXPECT_HAS(cfg.validate().message(), "num_key_value_heads must be positive");
}

// ---- load_config: files on disk ------------------------------------------------------------

class ConfigDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "philora_cfg_XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ + "/" + name) << text;
  }
  std::string dir_;
};

TEST_F(ConfigDir, MissingConfigFile) {
  auto c = load_config(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_HAS(c.status().message(), dir_ + "/config.json");
  EXPECT_HAS(c.status().message(), "not found");
}

TEST_F(ConfigDir, ErrorsNameThePath) {
  write("config.json", "{ nope");
  auto c = load_config(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_HAS(c.status().message(), dir_ + "/config.json: not valid JSON");
}

TEST_F(ConfigDir, GenerationConfigOverridesTokenIds) {
  write("config.json", phi3_mini_4k().dump());
  auto plain = load_config(dir_);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_EQ(plain->eos_token_ids, std::vector<int64_t>{32000});

  write("generation_config.json",
        R"({"bos_token_id": 5, "eos_token_id": [32000, 32001, 32007], "pad_token_id": 32000})");
  auto c = load_config(dir_);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{32000, 32001, 32007}));
  EXPECT_EQ(c->bos_token_id, std::optional<int64_t>(5));
  EXPECT_EQ(c->hidden_size, 3072);

  write("generation_config.json", R"({"eos_token_id": 7})");
  auto d = load_config(dir_);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->eos_token_ids, std::vector<int64_t>{7});
  EXPECT_EQ(d->bos_token_id, std::optional<int64_t>(1));  // untouched
}

TEST_F(ConfigDir, BadGenerationConfig) {
  write("config.json", phi3_mini_4k().dump());
  write("generation_config.json", "{\"eos_token_id\": [1,");
  auto c = load_config(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_HAS(c.status().message(), dir_ + "/generation_config.json: not valid JSON");

  write("generation_config.json", R"({"eos_token_id": "</s>"})");
  auto d = load_config(dir_);
  ASSERT_FALSE(d.ok());
  EXPECT_HAS(d.status().message(), dir_ + "/generation_config.json");
  EXPECT_HAS(d.status().message(), "'eos_token_id' must be an integer or a list of integers");
}

}  // namespace
}  // namespace philora::model
