// PEFT LoRA adapters: which modules a config selects (PEFT's matching rules), ranks and
// scales from rank_pattern / alpha_pattern / rslora, f32 conversion, and one test per
// refused adapter asserting the message names the file, tensor, module and numbers.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lora/adapter.h"
#include "test_util.h"

namespace philora::lora {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // pattern key order matters

constexpr const char* kPhi3Targets = "qkv_proj, o_proj, gate_up_proj, down_proj, lm_head";

model::Phi3Config tiny_base() { return test::tiny_phi3_config(); }

// (in_features, out_features) of each target of tiny_base().
std::pair<int64_t, int64_t> dims(Target t) {
  switch (t) {
    case Target::qkv:
      return {16, 32};  // out = (4 + 2·2)·4
    case Target::o:
      return {16, 16};
    case Target::gate_up:
      return {16, 48};
    case Target::down:
      return {24, 16};
    case Target::lm_head:
      return {16, 50};
  }
  return {0, 0};
}

constexpr Target kAll[] = {Target::qkv, Target::o, Target::gate_up, Target::down};

std::string tensor_name(int64_t layer, Target t, const char* ab, const char* infix = "") {
  return "base_model.model." + module_full_name(layer, t) + ".lora_" + ab + infix + ".weight";
}

// Builds adapter dirs in a temp directory: adapter_config.json + adapter_model.safetensors.
class AdapterDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "philora_lora_XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    config_ = {{"peft_type", "LORA"},
               {"task_type", "CAUSAL_LM"},
               {"base_model_name_or_path", "microsoft/Phi-3-mini-4k-instruct"},
               {"r", 4},
               {"lora_alpha", 8},
               {"lora_dropout", 0.05},
               {"bias", "none"},
               {"use_rslora", false},
               {"use_dora", false},
               {"fan_in_fan_out", false},
               {"modules_to_save", nullptr},
               {"rank_pattern", json::object()},
               {"alpha_pattern", json::object()},
               {"target_modules", {"qkv_proj"}}};
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Adds a (rank × in) A and (out × rank) B of random values stored as `dtype`; returns
  // the values as f32 (after rounding to `dtype`) for comparison.
  std::pair<std::vector<float>, std::vector<float>> add(int64_t layer, Target t, int64_t rank,
                                                        DType dtype = DType::f32,
                                                        const char* infix = "") {
    const auto [in, out] = dims(t);
    auto a = add_tensor(tensor_name(layer, t, "A", infix), dtype, {rank, in});
    auto b = add_tensor(tensor_name(layer, t, "B", infix), dtype, {out, rank});
    return {a, b};
  }
  std::vector<float> add_tensor(const std::string& name, DType dtype,
                                std::initializer_list<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(0.0f, 0.5f);
    std::vector<float> ref(size_t(n), 0.0f);
    auto bytes = std::make_shared<std::vector<uint8_t>>(size_t(n) * dtype_size(dtype));
    for (int64_t i = 0; i < n; ++i) {
      const float x = dist(rng_);
      switch (dtype) {
        case DType::f32:
          std::memcpy(bytes->data() + 4 * i, &x, 4);
          ref[size_t(i)] = x;
          break;
        case DType::f16: {
          const uint16_t h = f32_to_f16(x);
          std::memcpy(bytes->data() + 2 * i, &h, 2);
          ref[size_t(i)] = f16_to_f32(h);
          break;
        }
        case DType::bf16: {
          const uint16_t h = f32_to_bf16(x);
          std::memcpy(bytes->data() + 2 * i, &h, 2);
          ref[size_t(i)] = bf16_to_f32(h);
          break;
        }
        case DType::i32:
        case DType::i64:
          break;  // zeros: only for the refused-dtype test
      }
    }
    Tensor t(bytes->data(), dtype, shape);
    t.storage = bytes;
    tensors_.emplace_back(name, t);
    return ref;
  }
  // Writes the files and loads the adapter as "tiny".
  Expected<Adapter> load() {
    write_files();
    return load_adapter("tiny", dir_, base_);
  }
  void write_files() {
    std::ofstream(dir_ + "/adapter_config.json") << config_.dump(2);
    ASSERT_TRUE(io::write_safetensors(model_path(), tensors_).ok());
  }
  std::string load_error() {
    auto a = load();
    EXPECT_FALSE(a.ok()) << "adapter should be refused";
    return a.status().message();
  }
  std::string model_path() const { return dir_ + "/adapter_model.safetensors"; }
  std::string config_path() const { return dir_ + "/adapter_config.json"; }
  // Every per-layer target of every layer at rank r.
  void add_all_layers(Target t, int64_t r) {
    for (int64_t l = 0; l < base_.num_hidden_layers; ++l) add(l, t, r);
  }

  std::string dir_;
  json config_;
  model::Phi3Config base_ = tiny_base();
  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::mt19937 rng_{1234};
};

void expect_values(const Tensor& t, const std::vector<float>& ref, int64_t rows, int64_t cols) {
  ASSERT_EQ(t.dtype, DType::f32);
  ASSERT_EQ(t.device, Device::cpu);
  ASSERT_EQ(t.ndim, 2);
  ASSERT_EQ(t.dim(0), rows);
  ASSERT_EQ(t.dim(1), cols);
  ASSERT_NE(t.storage, nullptr);  // owned, not a view into the file
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(t.ptr<float>()[i], ref[i]) << "element " << i;
}

// ---- the happy paths ----------------------------------------------------------------------

TEST(AdapterNames, TargetModuleNames) {
  EXPECT_STREQ(target_module_name(Target::qkv), "qkv_proj");
  EXPECT_STREQ(target_module_name(Target::o), "o_proj");
  EXPECT_STREQ(target_module_name(Target::gate_up), "gate_up_proj");
  EXPECT_STREQ(target_module_name(Target::down), "down_proj");
  EXPECT_STREQ(target_module_name(Target::lm_head), "lm_head");
  EXPECT_EQ(module_full_name(2, Target::qkv), "model.layers.2.self_attn.qkv_proj");
  EXPECT_EQ(module_full_name(0, Target::o), "model.layers.0.self_attn.o_proj");
  EXPECT_EQ(module_full_name(7, Target::gate_up), "model.layers.7.mlp.gate_up_proj");
  EXPECT_EQ(module_full_name(1, Target::down), "model.layers.1.mlp.down_proj");
  EXPECT_EQ(module_full_name(-1, Target::lm_head), "lm_head");
}

TEST_F(AdapterDir, RankAlphaPatternsAndRslora) {
  config_["use_rslora"] = true;
  config_["target_modules"] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"};
  config_["rank_pattern"] = {{"model.layers.1.self_attn.qkv_proj", 2}, {"down_proj", 6}};
  config_["alpha_pattern"] = {{"o_proj", 3}};
  std::vector<std::pair<std::vector<float>, std::vector<float>>> qkv;
  for (int64_t l = 0; l < 3; ++l) {
    qkv.push_back(add(l, Target::qkv, l == 1 ? 2 : 4, DType::bf16));
    add(l, Target::o, 4, DType::f16);
    add(l, Target::gate_up, 4, DType::f32);
    add(l, Target::down, 6, DType::bf16);
  }
  const auto [lm_a, lm_b] = add(-1, Target::lm_head, 4, DType::f16);
  auto a = load();
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->name, "tiny");
  EXPECT_EQ(a->dir, dir_);
  EXPECT_EQ(a->config.base_model_name_or_path, "microsoft/Phi-3-mini-4k-instruct");
  ASSERT_EQ(a->layers.size(), 3u);
  EXPECT_EQ(a->max_rank, 6);
  for (int64_t l = 0; l < 3; ++l) {
    const auto& q = a->module(l, Target::qkv);
    ASSERT_TRUE(q.has_value());
    const int64_t r = l == 1 ? 2 : 4;
    EXPECT_EQ(q->rank, r) << l;
    EXPECT_FLOAT_EQ(q->scale, float(8.0 / std::sqrt(double(r)))) << l;  // rslora
    expect_values(q->a, qkv[size_t(l)].first, r, 16);
    expect_values(q->b, qkv[size_t(l)].second, 32, r);
    EXPECT_FLOAT_EQ(a->module(l, Target::o)->scale, 1.5f);  // alpha_pattern 3 / sqrt(4)
    EXPECT_FLOAT_EQ(a->module(l, Target::gate_up)->scale, 4.0f);
    EXPECT_EQ(a->module(l, Target::down)->rank, 6);
    EXPECT_FLOAT_EQ(a->module(l, Target::down)->scale, float(8.0 / std::sqrt(6.0)));
    EXPECT_EQ(a->module(l, Target::down)->a.shape_str(), "(6, 24)");
    EXPECT_EQ(a->module(l, Target::down)->b.shape_str(), "(16, 6)");
  }
  ASSERT_TRUE(a->lm_head.has_value());
  EXPECT_FLOAT_EQ(a->lm_head->scale, 4.0f);
  expect_values(a->lm_head->a, lm_a, 4, 16);
  expect_values(a->lm_head->b, lm_b, 50, 4);
}

TEST_F(AdapterDir, PlainScaleIsAlphaOverR) {
  config_["target_modules"] = json::array({"qkv_proj", "o_proj"});
  config_["lora_alpha"] = 16;
  config_["rank_pattern"] = {{"qkv_proj", 2}};
  config_["alpha_pattern"] = {{"layers.2.self_attn.o_proj", 3}};
  add_all_layers(Target::qkv, 2);
  add_all_layers(Target::o, 4);
  auto a = load();
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_FLOAT_EQ(a->module(0, Target::qkv)->scale, 8.0f);  // 16 / 2
  EXPECT_FLOAT_EQ(a->module(0, Target::o)->scale, 4.0f);    // 16 / 4
  EXPECT_FLOAT_EQ(a->module(2, Target::o)->scale, 0.75f);   // 3 / 4
  EXPECT_FALSE(a->module(0, Target::gate_up).has_value());
  EXPECT_FALSE(a->lm_head.has_value());
  EXPECT_EQ(a->max_rank, 4);
}

// The content hash (the prefix cache's adapter identity) depends on the
// weights and the scales, not on where or when the adapter was loaded.
TEST_F(AdapterDir, ContentHashFollowsWeightsAndScales) {
  config_["target_modules"] = json::array({"qkv_proj", "o_proj"});
  add_all_layers(Target::qkv, 4);
  add_all_layers(Target::o, 4);
  auto first = load();
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto again = load_adapter("other-name", dir_, base_);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(first->content_hash, 0u);
  EXPECT_EQ(first->content_hash, again->content_hash) << "same files, same hash";

  config_["lora_alpha"] = 9;  // the same weights at another scale
  auto scaled = load();
  ASSERT_TRUE(scaled.ok());
  EXPECT_NE(scaled->content_hash, first->content_hash);

  Tensor& t = tensors_.back().second;  // one element of one B changes
  t.ptr<float>()[0] += 1.0f;
  auto changed = load();
  ASSERT_TRUE(changed.ok());
  EXPECT_NE(changed->content_hash, scaled->content_hash);
}

TEST_F(AdapterDir, AdapterNameInfixAndFanInFanOut) {
  config_["fan_in_fan_out"] = true;  // PEFT turns it off for nn.Linear: no transpose
  const auto [ref_a, ref_b] = add(0, Target::qkv, 4, DType::f32, ".default");
  add(1, Target::qkv, 4, DType::f32, ".default");
  add(2, Target::qkv, 4);
  auto a = load();
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_TRUE(a->config.fan_in_fan_out);
  expect_values(a->module(0, Target::qkv)->a, ref_a, 4, 16);
  expect_values(a->module(0, Target::qkv)->b, ref_b, 32, 4);
}

TEST_F(AdapterDir, LayersToTransformAndUntrainedModules) {
  config_["target_modules"] = {"qkv_proj", "down_proj", "lm_head"};
  config_["layers_to_transform"] = json::array({0, 2});
  add(0, Target::qkv, 4);
  add(2, Target::qkv, 4);
  add(2, Target::down, 4);  // layer 0's down_proj is selected but absent: PEFT leaves B = 0
  auto a = load();
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_TRUE(a->module(0, Target::qkv).has_value());
  EXPECT_FALSE(a->module(1, Target::qkv).has_value());
  EXPECT_TRUE(a->module(2, Target::qkv).has_value());
  EXPECT_FALSE(a->module(0, Target::down).has_value());
  EXPECT_TRUE(a->module(2, Target::down).has_value());
}

TEST_F(AdapterDir, RegexTargetModules) {
  config_["target_modules"] = R"(.*\.layers\.[01]\.mlp\.(gate_up_proj|down_proj))";
  for (int64_t l = 0; l < 2; ++l) {
    add(l, Target::gate_up, 4);
    add(l, Target::down, 4);
  }
  auto a = load();
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_TRUE(a->module(1, Target::down).has_value());
  EXPECT_FALSE(a->module(2, Target::down).has_value());
}

// ---- PEFT's matching rules -----------------------------------------------------------------

AdapterConfig parse_ok(const json& j) {
  auto c = parse_adapter_config(j.dump(), "adapter_config.json");
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? *c : AdapterConfig{};
}

TEST(AdapterMatching, RankPatternFirstKeyInFileOrderWins) {
  const std::string qkv0 = "model.layers.0.self_attn.qkv_proj";
  AdapterConfig c =
      parse_ok(json{{"r", 8},
                    {"target_modules", {"qkv_proj"}},
                    {"rank_pattern", {{"qkv_proj", 2}, {"layers.0.self_attn.qkv_proj", 5}}}});
  EXPECT_EQ(module_rank(c, qkv0), 2);
  AdapterConfig d =
      parse_ok(json{{"r", 8},
                    {"target_modules", {"qkv_proj"}},
                    {"rank_pattern", {{"layers.0.self_attn.qkv_proj", 5}, {"qkv_proj", 2}}}});
  EXPECT_EQ(module_rank(d, qkv0), 5);
  EXPECT_EQ(module_rank(d, "model.layers.1.self_attn.qkv_proj"), 2);
  EXPECT_EQ(module_rank(d, "model.layers.1.self_attn.o_proj"), 8);
}

TEST(AdapterMatching, PatternKeysAreRegexesAnchoredAtADot) {
  AdapterConfig c = parse_ok(json{{"r", 8},
                                  {"lora_alpha", 16},
                                  {"target_modules", {"qkv_proj"}},
                                  {"rank_pattern", {{"proj", 3}, {"self_attn.*", 5}}},
                                  {"alpha_pattern", {{"layers.1.mlp.down_proj", 7}}}});
  // "proj" must follow a dot or the start: o_proj's name does not end in ".proj".
  EXPECT_EQ(module_rank(c, "model.layers.0.mlp.gate_up_proj"), 8);
  EXPECT_EQ(module_rank(c, "model.layers.0.self_attn.o_proj"), 5);  // regex "self_attn.*"
  EXPECT_EQ(module_rank(c, "lm_head"), 8);
  EXPECT_DOUBLE_EQ(module_alpha(c, "model.layers.1.mlp.down_proj"), 7);
  EXPECT_DOUBLE_EQ(module_alpha(c, "model.layers.11.mlp.down_proj"), 16);
  EXPECT_DOUBLE_EQ(module_alpha(c, "model.layers.2.mlp.down_proj"), 16);
}

TEST(AdapterMatching, TargetsModule) {
  AdapterConfig list =
      parse_ok(json{{"target_modules", json::array({"self_attn.o_proj", "lm_head"})}});
  EXPECT_TRUE(targets_module(list, "model.layers.0.self_attn.o_proj"));
  EXPECT_FALSE(targets_module(list, "model.layers.0.self_attn.qkv_proj"));
  EXPECT_TRUE(targets_module(list, "lm_head"));

  AdapterConfig layers =
      parse_ok(json{{"target_modules", {"qkv_proj", "lm_head", "model.layers.1.mlp.down_proj"}},
                    {"layers_to_transform", 2}});
  EXPECT_TRUE(targets_module(layers, "model.layers.2.self_attn.qkv_proj"));
  EXPECT_FALSE(targets_module(layers, "model.layers.1.self_attn.qkv_proj"));
  // "lm_head" equals a list entry exactly, and PEFT checks exact names before the layer filter.
  EXPECT_TRUE(targets_module(layers, "lm_head"));
  EXPECT_TRUE(targets_module(layers, "model.layers.1.mlp.down_proj"));  // exact name

  AdapterConfig pattern = parse_ok(json{{"target_modules", {"qkv_proj"}},
                                        {"layers_to_transform", {1}},
                                        {"layers_pattern", "blocks"}});
  EXPECT_FALSE(targets_module(pattern, "model.layers.1.self_attn.qkv_proj"));
  pattern.layers_pattern = {"layers"};
  EXPECT_TRUE(targets_module(pattern, "model.layers.1.self_attn.qkv_proj"));

  AdapterConfig excl = parse_ok(json{{"target_modules", json::array({"qkv_proj", "o_proj"})},
                                     {"exclude_modules", {"layers.0.self_attn.o_proj"}}});
  EXPECT_FALSE(targets_module(excl, "model.layers.0.self_attn.o_proj"));
  EXPECT_TRUE(targets_module(excl, "model.layers.1.self_attn.o_proj"));
  AdapterConfig excl_re = parse_ok(
      json{{"target_modules", {"qkv_proj"}}, {"exclude_modules", R"(.*layers\.[12]\..*)"}});
  EXPECT_TRUE(targets_module(excl_re, "model.layers.0.self_attn.qkv_proj"));
  EXPECT_FALSE(targets_module(excl_re, "model.layers.2.self_attn.qkv_proj"));

  AdapterConfig regex = parse_ok(json{{"target_modules", "qkv_proj"}});  // fullmatch
  EXPECT_FALSE(targets_module(regex, "model.layers.0.self_attn.qkv_proj"));

  AdapterConfig all = parse_ok(json{{"target_modules", "all-linear"}});
  EXPECT_FALSE(all.target_modules_regex.has_value());
  EXPECT_TRUE(targets_module(all, "model.layers.0.mlp.down_proj"));
  EXPECT_TRUE(targets_module(all, "model.layers.0.self_attn.qkv_proj"));
  EXPECT_FALSE(targets_module(all, "lm_head"));
}

// ---- refused adapter_config.json -----------------------------------------------------------

TEST(AdapterConfigErrors, RefusedFeatures) {
  struct Case {
    json patch;
    const char* expect;
  } cases[] = {
      {{{"peft_type", "IA3"}}, "peft_type is \"IA3\", but philora loads only LORA adapters"},
      {{{"use_dora", true}}, "use_dora is true: DoRA adapters are not supported"},
      {{{"modules_to_save", {"lm_head"}}}, "modules_to_save is [\"lm_head\"]"},
      {{{"bias", "lora_only"}}, "bias is \"lora_only\", expected \"none\""},
      {{{"lora_bias", true}}, "lora_bias is true"},
      {{{"layer_replication", {{0, 2}}}}, "layer_replication is [[0,2]]: not supported"},
      {{{"r", "8"}}, "field 'r' must be a positive integer, found \"8\""},
      {{{"r", 0}}, "field 'r' must be a positive integer, found 0"},
      {{{"lora_alpha", "16"}}, "field 'lora_alpha' must be a number"},
      {{{"use_rslora", "yes"}}, "field 'use_rslora' must be true or false"},
      {{{"target_modules", 5}}, "field 'target_modules' must be a string or a list of strings"},
      {{{"target_modules", nullptr}}, "target_modules is missing or null"},
      {{{"target_modules", json::array()}}, "target_modules is an empty list"},
      {{{"target_modules", "(qkv"}}, "target_modules: invalid regex '(qkv'"},
      {{{"target_modules", ".*qkv_proj"}, {"layers_to_transform", {0}}},
       "layers_to_transform cannot be used when target_modules is a string"},
      {{{"layers_to_transform", "0"}}, "field 'layers_to_transform' must be an integer or a list"},
      {{{"rank_pattern", {{"qkv_proj", "4"}}}},
       "rank_pattern['qkv_proj'] must be a positive integer"},
      {{{"rank_pattern", {{"qkv[", 4}}}}, "rank_pattern: invalid regex 'qkv['"},
      {{{"alpha_pattern", {{"o_proj", "x"}}}}, "alpha_pattern['o_proj'] must be a number"},
  };
  for (const Case& c : cases) {
    json j = {{"peft_type", "LORA"}, {"r", 8}, {"target_modules", {"qkv_proj"}}};
    for (auto it = c.patch.begin(); it != c.patch.end(); ++it) j[it.key()] = it.value();
    auto parsed = parse_adapter_config(j.dump(), "/a/adapter_config.json");
    ASSERT_FALSE(parsed.ok()) << c.patch.dump();
    EXPECT_HAS(parsed.status().message(), "/a/adapter_config.json") << c.patch.dump();
    EXPECT_HAS(parsed.status().message(), c.expect) << c.patch.dump();
  }
  auto bad = parse_adapter_config("{\"r\": ", "/a/adapter_config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_HAS(bad.status().message(), "/a/adapter_config.json: not valid JSON");
}

// ---- refused adapters on disk --------------------------------------------------------------

TEST_F(AdapterDir, MissingFiles) {
  auto none = load_adapter("tiny", dir_, base_);
  ASSERT_FALSE(none.ok());
  EXPECT_HAS(none.status().message(), "adapter 'tiny'");
  EXPECT_HAS(none.status().message(), config_path() + ": file not found");

  std::ofstream(config_path()) << config_.dump();
  auto no_model = load_adapter("tiny", dir_, base_);
  ASSERT_FALSE(no_model.ok());
  EXPECT_HAS(no_model.status().message(), model_path() + ": file not found");
}

TEST_F(AdapterDir, TargetModulesPhi3DoesNotHave) {
  for (json targets :
       {json{"q_proj", "k_proj", "v_proj"}, json::array({"qkv_proj", "embed_tokens"}),
        json{"gate_proj"}, json{"layers.3.self_attn.qkv_proj"}}) {
    config_["target_modules"] = targets;
    tensors_.clear();
    add(0, Target::qkv, 4);
    const std::string m = load_error();
    EXPECT_HAS(m, config_path()) << targets.dump();
    EXPECT_HAS(m, "which Phi-3 does not have") << targets.dump();
    EXPECT_HAS(m, kPhi3Targets) << targets.dump();
  }
  config_["target_modules"] = json::array({"q_proj", "v_proj"});
  EXPECT_HAS(load_error(), "target_modules names 'q_proj'");
}

TEST_F(AdapterDir, RegexTargetsThatPhi3CannotTake) {
  add(0, Target::qkv, 4);
  config_["target_modules"] = ".*(embed_tokens|qkv_proj)";
  std::string m = load_error();
  EXPECT_HAS(m, "matches 'model.embed_tokens', which LoRA cannot target");
  config_["target_modules"] = R"(.*\.q_proj)";
  m = load_error();
  EXPECT_HAS(m, R"(target_modules regex '.*\.q_proj' matches no module of Phi-3)");
  EXPECT_HAS(m, kPhi3Targets);
}

TEST_F(AdapterDir, LayersToTransformOutOfRange) {
  config_["layers_to_transform"] = json::array({0, 3});
  add(0, Target::qkv, 4);
  const std::string m = load_error();
  EXPECT_HAS(m, config_path());
  EXPECT_HAS(m, "layers_to_transform names layer 3, but the base model has 3 layers");
}

TEST_F(AdapterDir, TensorForAModulePhi3DoesNotHave) {
  add(0, Target::qkv, 4);
  const std::string bad = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  add_tensor(bad, DType::f32, {4, 16});
  const std::string m = load_error();
  EXPECT_HAS(m, model_path());
  EXPECT_HAS(m, "'" + bad + "'");
  EXPECT_HAS(m, "module 'q_proj' (model.layers.0.self_attn.q_proj), which Phi-3 does not have");
  EXPECT_HAS(m, kPhi3Targets);
}

TEST_F(AdapterDir, TensorNamesNotUnderstood) {
  for (const std::string bad :
       {"base_model.model.model.layers.0.self_attn.qkv_proj.weight",
        "base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.bias", "lora_A.weight",
        "base_model.model.model.layers.0.mlp.qkv_proj.lora_A.weight",
        "base_model.model.model.layers.x.self_attn.qkv_proj.lora_A.weight"}) {
    tensors_.clear();
    add(0, Target::qkv, 4);
    add_tensor(bad, DType::f32, {4, 16});
    const std::string m = load_error();
    EXPECT_HAS(m, model_path()) << bad;
    EXPECT_HAS(m, "'" + bad + "' is not a LoRA weight philora understands") << bad;
  }
}

TEST_F(AdapterDir, LayerIndexOutOfRange) {
  add(0, Target::qkv, 4);
  add_tensor("base_model.model.model.layers.3.self_attn.qkv_proj.lora_A.weight", DType::f32,
             {4, 16});
  const std::string m = load_error();
  EXPECT_HAS(m, model_path());
  EXPECT_HAS(m, "'base_model.model.model.layers.3.self_attn.qkv_proj.lora_A.weight'");
  EXPECT_HAS(m, "layer 3 is out of range (the base model has 3 layers)");
}

TEST_F(AdapterDir, ShapeOfAAgainstTheBaseModel) {
  add_tensor(tensor_name(0, Target::qkv, "A"), DType::f32, {4, 15});
  add_tensor(tensor_name(0, Target::qkv, "B"), DType::f32, {32, 4});
  const std::string m = load_error();
  EXPECT_HAS(m, model_path());
  EXPECT_HAS(m, "'" + tensor_name(0, Target::qkv, "A") + "'");
  EXPECT_HAS(m, "lora_A of 'model.layers.0.self_attn.qkv_proj'");
  EXPECT_HAS(m, "expected shape (rank, in_features) = (4, 16), found (4, 15)");
}

TEST_F(AdapterDir, ShapeOfBAgainstTheBaseModel) {
  config_["target_modules"] = {"down_proj"};
  add_tensor(tensor_name(1, Target::down, "A"), DType::f32, {4, 24});
  add_tensor(tensor_name(1, Target::down, "B"), DType::f32, {24, 4});  // (intermediate, r)
  const std::string m = load_error();
  EXPECT_HAS(m, "lora_B of 'model.layers.1.mlp.down_proj'");
  EXPECT_HAS(m, "expected shape (out_features, rank) = (16, 4), found (24, 4)");
}

// A NaN or infinity in an adapter is refused at load: its B shares the base
// matmul with every token of a decode step (LoRA columns).
TEST_F(AdapterDir, NonFiniteValuesAreRefused) {
  add(0, Target::qkv, 4);
  Tensor& b = tensors_.back().second;  // lora_B, f32
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(static_cast<char*>(b.data) + 5 * sizeof(float), &inf, sizeof(float));
  const std::string m = load_error();
  EXPECT_HAS(m, "'" + tensor_name(0, Target::qkv, "B") + "'");
  EXPECT_HAS(m, "non-finite value (inf) at element 5");
}

TEST_F(AdapterDir, RankOfBDiffersFromA) {
  add_tensor(tensor_name(0, Target::qkv, "A"), DType::f32, {4, 16});
  add_tensor(tensor_name(0, Target::qkv, "B"), DType::f32, {32, 3});
  EXPECT_HAS(load_error(), "expected shape (out_features, rank) = (32, 4), found (32, 3)");
}

TEST_F(AdapterDir, RankDisagreesWithConfig) {
  config_["rank_pattern"] = {{"layers.0.self_attn.qkv_proj", 2}};
  add(0, Target::qkv, 4);
  const std::string m = load_error();
  EXPECT_HAS(m, "module 'model.layers.0.self_attn.qkv_proj' has rank 4");
  EXPECT_HAS(m, config_path() + " gives r = 2");
}

TEST_F(AdapterDir, AWithoutBAndBWithoutA) {
  add_tensor(tensor_name(0, Target::qkv, "A"), DType::f32, {4, 16});
  std::string m = load_error();
  EXPECT_HAS(m, "module 'model.layers.0.self_attn.qkv_proj' has '" +
                    tensor_name(0, Target::qkv, "A") + "' but no lora_B tensor");
  tensors_.clear();
  add_tensor(tensor_name(2, Target::qkv, "B"), DType::f32, {32, 4});
  m = load_error();
  EXPECT_HAS(m, "has '" + tensor_name(2, Target::qkv, "B") + "' but no lora_A tensor");
}

TEST_F(AdapterDir, EmbeddingLoraRefused) {
  add(0, Target::qkv, 4);
  add_tensor("base_model.model.model.embed_tokens.lora_embedding_A", DType::f32, {4, 50});
  const std::string m = load_error();
  EXPECT_HAS(m, "'base_model.model.model.embed_tokens.lora_embedding_A'");
  EXPECT_HAS(m, "embedding LoRA (lora_embedding_A) is not supported");
}

TEST_F(AdapterDir, TensorForAModuleTheConfigDoesNotSelect) {
  add(0, Target::qkv, 4);
  add(0, Target::o, 4);
  const std::string m = load_error();
  EXPECT_HAS(m, "'" + tensor_name(0, Target::o, "A") + "'");
  EXPECT_HAS(m, "module 'model.layers.0.self_attn.o_proj', which target_modules in " +
                    config_path() + " does not select");
}

TEST_F(AdapterDir, IntegerAndVectorTensors) {
  add_tensor(tensor_name(0, Target::qkv, "A"), DType::i32, {4, 16});
  add_tensor(tensor_name(0, Target::qkv, "B"), DType::f32, {32, 4});
  EXPECT_HAS(load_error(),
             "'" + tensor_name(0, Target::qkv, "A") + "' has dtype I32, expected F32, F16 or BF16");
  tensors_.clear();
  add_tensor(tensor_name(0, Target::qkv, "A"), DType::f32, {64});
  add_tensor(tensor_name(0, Target::qkv, "B"), DType::f32, {32, 4});
  EXPECT_HAS(load_error(), "has shape (64), expected a matrix");
}

TEST_F(AdapterDir, DuplicateTensorsAndEmptyFile) {
  add(0, Target::qkv, 4);
  add_tensor(tensor_name(0, Target::qkv, "A", ".default"), DType::f32, {4, 16});
  EXPECT_HAS(load_error(), "two lora_A tensors for module 'model.layers.0.self_attn.qkv_proj'");
  tensors_.clear();
  EXPECT_HAS(load_error(), model_path() + ": holds no LoRA tensors");
}

// PEFT's default save of an adapter that targets lm_head also writes lm_head's
// base weight (base_model.model.lm_head.base_layer.weight); it must equal the base's.
TEST_F(AdapterDir, LmHeadBaseLayerCopyEqualToTheBaseLoads) {
  config_["target_modules"] = {"qkv_proj", "lm_head"};
  add(0, Target::qkv, 4);
  add(-1, Target::lm_head, 4);
  const std::vector<float> head = add_tensor("base_model.model.lm_head.base_layer.weight", DType::bf16, {50, 16});
  write_files();
  // The base checkpoint: the same values, stored as f32 (a bf16 copy of an f32 base is not equal
  // in general; here the values are bf16-exact so f32 and bf16 hold the same numbers).
  auto bytes = std::make_shared<std::vector<float>>(head);
  Tensor t(bytes->data(), DType::f32, {50, 16});
  t.storage = bytes;
  const std::string base_path = dir_ + "/base.safetensors";
  ASSERT_TRUE(io::write_safetensors(base_path, {{"lm_head.weight", t}}).ok());
  auto base = io::TensorSet::open_file(base_path);
  ASSERT_TRUE(base.ok()) << base.status().message();
  auto a = load_adapter("tiny", dir_, base_, &*base);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE(a->lm_head.has_value());
  EXPECT_EQ(a->lm_head->rank, 4);

  (*bytes)[17] += 0.25f;  // now the copy differs from the base at element 17
  ASSERT_TRUE(io::write_safetensors(base_path, {{"lm_head.weight", t}}).ok());
  auto other = io::TensorSet::open_file(base_path);
  ASSERT_TRUE(other.ok());
  auto refused = load_adapter("tiny", dir_, base_, &*other);
  ASSERT_FALSE(refused.ok());
  EXPECT_HAS(refused.status().message(), "'base_model.model.lm_head.base_layer.weight'");
  EXPECT_HAS(refused.status().message(), "differs from the model's at element 17");
}

TEST_F(AdapterDir, BaseLayerCopyOfAnUntargetedOrWrongShapedModule) {
  add(0, Target::qkv, 4);  // target_modules: qkv_proj only
  add_tensor("base_model.model.lm_head.base_layer.weight", DType::f32, {50, 16});
  EXPECT_HAS(load_error(), "copies the base weight of 'lm_head', which target_modules in " +
                               config_path() + " does not select");
  tensors_.clear();
  config_["target_modules"] = {"qkv_proj", "lm_head"};
  add(0, Target::qkv, 4);
  add(-1, Target::lm_head, 4);
  add_tensor("base_model.model.lm_head.base_layer.weight", DType::f32, {50, 8});
  write_files();
  auto base_bytes = std::make_shared<std::vector<float>>(50 * 16, 0.5f);
  Tensor t(base_bytes->data(), DType::f32, {50, 16});
  t.storage = base_bytes;
  ASSERT_TRUE(io::write_safetensors(dir_ + "/base.safetensors", {{"lm_head.weight", t}}).ok());
  auto base = io::TensorSet::open_file(dir_ + "/base.safetensors");
  ASSERT_TRUE(base.ok());
  auto a = load_adapter("tiny", dir_, base_, &*base);
  ASSERT_FALSE(a.ok());
  EXPECT_HAS(a.status().message(), "has shape (50, 8), but the model's 'lm_head.weight' has shape (50, 16)");
}

TEST_F(AdapterDir, CorruptSafetensorsNamesTheFile) {
  add(0, Target::qkv, 4);
  write_files();
  fs::resize_file(model_path(), fs::file_size(model_path()) - 4);
  auto a = load_adapter("tiny", dir_, base_);
  ASSERT_FALSE(a.ok());
  EXPECT_HAS(a.status().message(), model_path());
  EXPECT_HAS(a.status().message(), "truncated");
}

}  // namespace
}  // namespace philora::lora
