// Tensor parallelism on the CPU's simulated ranks (--tensor-parallel N):
// every golden fixture whose head counts split over N = 2 and 4 ranks, and a
// random model with more heads (written here, tied embeddings, partial
// rotary, adapters on every module and lm_head) at 2, 4 and 8 ranks, give the
// logits of one rank (within 1e-5, relative per sequence) and its greedy
// tokens, with mixed adapters in one batch, through the real CLI. The
// reference is the one-rank forward, which the golden tests check against HF.
// Counts that do not split are refused, naming them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <unistd.h>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "backend/tensor_parallel_group.h"
#include "io/safetensors.h"
#include "model/cli_runner.h"
#include "model/config.h"
#include "model/shard.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora::test {
namespace {

std::vector<json> parse_jsonl(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// --model DIR and every adapter under `adapters` (sorted by name).
std::vector<std::string> model_args(const fs::path& model, const fs::path& adapters) {
  std::vector<std::string> args = {"--model", model.string(), "--device", "cpu"};
  std::vector<std::string> names;
  if (fs::exists(adapters))
    for (const auto& e : fs::directory_iterator(adapters)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) {
    args.push_back("--adapter");
    args.push_back(n + "=" + (adapters / n).string());
  }
  return args;
}

CliResult run(const std::string& command, std::vector<std::string> args, const fs::path& requests,
              int64_t ranks, const std::vector<std::string>& extra = {}) {
  args.insert(args.begin(), command);
  if (command == "generate") args.push_back("--greedy");
  args.insert(args.end(),
              {"--requests", requests.string(), "--tensor-parallel", std::to_string(ranks)});
  args.insert(args.end(), extra.begin(), extra.end());
  return run_philora(args);
}

// Score and greedy generation over `ranks` ranks equal one rank's.
void check_ranks(const std::vector<std::string>& args, const fs::path& score_requests,
                 const fs::path& generate_requests, int64_t ranks) {
  for (const bool columns : {true, false}) {  // both LoRA forms: columns, shrink / expand
    SCOPED_TRACE(columns ? "LoRA columns" : "--lora-columns 0");
    const std::vector<std::string> extra =
        columns ? std::vector<std::string>{} : std::vector<std::string>{"--lora-columns", "0"};
    const CliResult one = run("score", args, score_requests, 1, extra);
    const CliResult many = run("score", args, score_requests, ranks, extra);
    ASSERT_EQ(one.exit_code, 0) << one.err;
    ASSERT_EQ(many.exit_code, 0) << many.err;
    const auto a = parse_jsonl(one.out), b = parse_jsonl(many.out);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(a.empty());
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i]["id"], b[i]["id"]);
      const auto& la = a[i]["logits"];
      const auto& lb = b[i]["logits"];
      ASSERT_EQ(la.size(), lb.size());
      double num = 0, den = 0;
      for (size_t r = 0; r < la.size(); ++r) {
        ASSERT_EQ(la[r].size(), lb[r].size());
        for (size_t c = 0; c < la[r].size(); ++c) {
          const double x = la[r][c].get<double>(), y = lb[r][c].get<double>();
          num += (x - y) * (x - y);
          den += x * x;
        }
      }
      const double rel = std::sqrt(num / den);
      EXPECT_LE(rel, 1e-5) << a[i]["id"] << " at " << ranks << " ranks: relative error " << rel;
    }
  }
  for (const std::string speculate : {"", "ngram"}) {
    SCOPED_TRACE("speculate " + speculate);
    const std::vector<std::string> extra = speculate.empty()
                                               ? std::vector<std::string>{}
                                               : std::vector<std::string>{"--speculate", speculate};
    const CliResult one = run("generate", args, generate_requests, 1, extra);
    const CliResult many = run("generate", args, generate_requests, ranks, extra);
    ASSERT_EQ(one.exit_code, 0) << one.err;
    ASSERT_EQ(many.exit_code, 0) << many.err;
    const auto a = parse_jsonl(one.out), b = parse_jsonl(many.out);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["id"], b[i]["id"]);
      EXPECT_FALSE(a[i]["tokens"].empty());
      EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << a[i]["id"] << " at " << ranks << " ranks";
    }
  }
}

// ---- the golden fixtures ------------------------------------------------------

struct FixtureRanks {
  std::string fixture;
  int64_t ranks = 1;
};

std::vector<FixtureRanks> fixture_ranks() {
  std::vector<FixtureRanks> out;
  const fs::path root = fs::path(PHILORA_TEST_DATA) / "golden";
  std::vector<std::string> names;
  if (fs::exists(root))
    for (const auto& e : fs::directory_iterator(root))
      if (fs::exists(e.path() / "model" / "config.json")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  for (const std::string& n : names)
    for (const int64_t r : {2, 4}) out.push_back({n, r});
  return out;
}

class TensorParallelGolden : public ::testing::TestWithParam<FixtureRanks> {};

TEST_P(TensorParallelGolden, MatchesOneRankOrRefusesNamingTheCounts) {
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / GetParam().fixture;
  const int64_t ranks = GetParam().ranks;
  auto config = model::load_config((dir / "model").string());
  ASSERT_TRUE(config.ok()) << config.status().message();
  const auto args = model_args(dir / "model", dir / "adapters");
  const Status split = model::check_tensor_parallel(*config, ranks);
  if (!split.ok()) {  // refused by the CLI with the counts named
    const CliResult r = run("score", args, dir / "requests.jsonl", ranks);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_HAS(r.err, "tensor parallelism over " + std::to_string(ranks) + " ranks");
    EXPECT_HAS(r.err, split.message());  // whichever count it is that does not split
    EXPECT_TRUE(r.out.empty());
    return;
  }
  check_ranks(args, dir / "requests.jsonl", dir / "generate_requests.jsonl", ranks);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallelGolden, ::testing::ValuesIn(fixture_ranks()),
                         [](const auto& info) {
                           return info.param.fixture + "_" + std::to_string(info.param.ranks) +
                                  "_ranks";
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TensorParallelGolden);

// The fixtures must cover 4 ranks with kv heads replicated (fewer kv heads than ranks).
TEST(TensorParallelGoldenFixtures, SomeSplitOverFourRanks) {
  int64_t four = 0;
  for (const FixtureRanks& f : fixture_ranks()) {
    auto c =
        model::load_config((fs::path(PHILORA_TEST_DATA) / "golden" / f.fixture / "model").string());
    ASSERT_TRUE(c.ok());
    if (f.ranks == 4 && model::check_tensor_parallel(*c, 4).ok()) ++four;
  }
  EXPECT_GE(four, 2);
}

// ---- a random model with more heads ---------------------------------------------

// 8 query heads over 4 kv heads (head_dim 16, hidden 64: not heads · head_dim),
// intermediate 96, vocab 320, 2 layers, partial rotary 0.5, tied embeddings;
// two adapters of different ranks (one on lm_head too).
class WideModel {
 public:
  WideModel() : dir_(fs::temp_directory_path() / ("philora_tp_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_ / "model");
    const json config = {{"architectures", {"Phi3ForCausalLM"}},
                         {"model_type", "phi3"},
                         {"vocab_size", kVocab},
                         {"hidden_size", kHidden},
                         {"intermediate_size", kInter},
                         {"num_hidden_layers", kLayers},
                         {"num_attention_heads", 8},
                         {"num_key_value_heads", 4},
                         {"head_dim", kHeadDim},
                         {"partial_rotary_factor", 0.5},
                         {"rms_norm_eps", 1e-5},
                         {"rope_theta", 10000.0},
                         {"max_position_embeddings", 4096},
                         {"tie_word_embeddings", true},
                         {"torch_dtype", "float32"},
                         {"bos_token_id", 1},
                         {"eos_token_id", 2}};
    std::ofstream(dir_ / "model" / "config.json") << config.dump(2);
    std::vector<std::pair<std::string, Tensor>> w;
    add(w, "model.embed_tokens.weight", {kVocab, kHidden}, 0, 1.0f);
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(w, p + "input_layernorm.weight", {kHidden}, 1, 0.1f);
      add(w, p + "self_attn.qkv_proj.weight", {kQkv, kHidden}, 0, 0.25f);
      add(w, p + "self_attn.o_proj.weight", {kHidden, kQ}, 0, 0.2f);
      add(w, p + "post_attention_layernorm.weight", {kHidden}, 1, 0.1f);
      add(w, p + "mlp.gate_up_proj.weight", {2 * kInter, kHidden}, 0, 0.25f);
      add(w, p + "mlp.down_proj.weight", {kHidden, kInter}, 0, 0.2f);
    }
    add(w, "model.norm.weight", {kHidden}, 1, 0.1f);
    EXPECT_TRUE(io::write_safetensors((dir_ / "model" / "model.safetensors").string(), w).ok());
    write_adapter("a", 8, 16.0, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"});
    write_adapter("b", 4, 4.0, {"qkv_proj", "o_proj", "down_proj", "lm_head"});
    std::ofstream score(dir_ / "score.jsonl");
    std::ofstream base(dir_ / "score_base.jsonl");  // the same ids, no adapter
    std::ofstream gen(dir_ / "generate.jsonl");
    const char* adapters[] = {"null", "\"a\"", "\"b\"", "\"a\"", "\"b\"", "null"};
    const int lengths[] = {1, 5, 17, 33, 9, 3};
    for (int i = 0; i < 6; ++i) {
      std::string ids;
      for (int k = 0; k < lengths[i]; ++k)
        ids += (k ? "," : "") + std::to_string(3 + (i * 97 + k * 31) % (kVocab - 3));
      score << "{\"id\": \"s" << i << "\", \"input_ids\": [" << ids
            << "], \"adapter\": " << adapters[i] << "}\n";
      base << "{\"id\": \"s" << i << "\", \"input_ids\": [" << ids << "], \"adapter\": null}\n";
      gen << "{\"id\": \"g" << i << "\", \"input_ids\": [" << ids
          << "], \"adapter\": " << adapters[i]
          << ", \"max_new_tokens\": 8, \"ignore_eos\": true}\n";
    }
  }
  ~WideModel() { fs::remove_all(dir_); }

  fs::path model() const { return dir_ / "model"; }
  fs::path adapters() const { return dir_ / "adapters"; }
  fs::path score() const { return dir_ / "score.jsonl"; }
  fs::path score_base() const { return dir_ / "score_base.jsonl"; }
  fs::path generate() const { return dir_ / "generate.jsonl"; }

 private:
  static constexpr int64_t kVocab = 320, kHidden = 64, kInter = 96, kLayers = 2, kHeadDim = 16;
  static constexpr int64_t kQ = 8 * kHeadDim, kQkv = kQ + 2 * 4 * kHeadDim;

  void add(std::vector<std::pair<std::string, Tensor>>& out, const std::string& name,
           std::initializer_list<int64_t> shape, float mean, float width) {
    Tensor t = cpu_.random_uniform(shape, seed_++, mean, width);
    out.emplace_back(name, t);
  }
  void write_adapter(const std::string& name, int64_t r, double alpha,
                     const std::vector<std::string>& targets) {
    const fs::path d = dir_ / "adapters" / name;
    fs::create_directories(d);
    const json config = {{"peft_type", "LORA"},     {"task_type", "CAUSAL_LM"},  {"r", r},
                         {"lora_alpha", alpha},     {"target_modules", targets}, {"bias", "none"},
                         {"fan_in_fan_out", false}, {"use_rslora", false}};
    std::ofstream(d / "adapter_config.json") << config.dump(2);
    const std::map<std::string, std::pair<int64_t, int64_t>> dims = {
        // (in, out)
        {"qkv_proj", {kHidden, kQkv}},
        {"o_proj", {kQ, kHidden}},
        {"gate_up_proj", {kHidden, 2 * kInter}},
        {"down_proj", {kInter, kHidden}},
        {"lm_head", {kHidden, kVocab}}};
    std::vector<std::pair<std::string, Tensor>> w;
    for (const std::string& t : targets) {
      const auto [in, out] = dims.at(t);
      std::vector<std::string> prefixes;
      if (t == "lm_head") {
        prefixes.push_back("base_model.model.lm_head.");
      } else {
        const std::string part = t == "qkv_proj" || t == "o_proj" ? "self_attn." : "mlp.";
        for (int l = 0; l < kLayers; ++l)
          prefixes.push_back("base_model.model.model.layers." + std::to_string(l) + "." + part + t +
                             ".");
      }
      for (const std::string& p : prefixes) {
        add(w, p + "lora_A.weight", {r, in}, 0, 0.2f);
        add(w, p + "lora_B.weight", {out, r}, 0, 0.2f);
      }
    }
    EXPECT_TRUE(io::write_safetensors((d / "adapter_model.safetensors").string(), w).ok());
  }

  fs::path dir_;
  CpuBackend cpu_{1};
  uint64_t seed_ = 7;
};

TEST(TensorParallelWideModel, MatchesOneRankAtTwoFourAndEightRanks) {
  WideModel m;
  const auto args = model_args(m.model(), m.adapters());
  // The adapters change the outputs (else the LoRA split would go unchecked).
  const CliResult with = run("score", args, m.score(), 1);
  const CliResult without = run("score", args, m.score_base(), 1);
  ASSERT_EQ(with.exit_code, 0) << with.err;
  ASSERT_EQ(without.exit_code, 0) << without.err;
  const auto a = parse_jsonl(with.out), b = parse_jsonl(without.out);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) {
    const json& last_a = a[i]["logits"].back();
    const json& last_b = b[i]["logits"].back();
    double num = 0, den = 0;
    for (size_t c = 0; c < last_a.size(); ++c) {
      const double x = last_a[c].get<double>(), y = last_b[c].get<double>();
      num += (x - y) * (x - y);
      den += y * y;
    }
    const bool adapter = i == 1 || i == 2 || i == 3 || i == 4;
    if (adapter) {
      EXPECT_GT(std::sqrt(num / den), 0.05) << a[i]["id"] << ": its adapter changes little";
    } else {
      EXPECT_EQ(num, 0.0) << a[i]["id"];
    }
  }
  for (const int64_t ranks : {2, 4, 8}) {  // 8: each of the 4 kv heads on 2 ranks
    SCOPED_TRACE(std::to_string(ranks) + " ranks");
    check_ranks(args, m.score(), m.generate(), ranks);
  }
}

// --simulate-ranks sends the collectives through host copies (what CUDA's
// simulated ranks on one GPU use): the same results as one rank.
TEST(TensorParallelWideModel, SimulatedRanksThroughHostCopiesMatchOneRank) {
  WideModel m;
  auto args = model_args(m.model(), m.adapters());
  args.push_back("--simulate-ranks");
  check_ranks(args, m.score(), m.generate(), 2);
}

TEST(TensorParallelWideModel, RefusesRanksTheHeadsDoNotSplitInto) {
  WideModel m;
  const auto args = model_args(m.model(), m.adapters());
  const CliResult three = run("score", args, m.score(), 3);
  EXPECT_EQ(three.exit_code, 1);
  EXPECT_HAS(three.err, "tensor parallelism over 3 ranks: the model's num_attention_heads is 8");
  const CliResult sixteen = run("generate", args, m.generate(), 16);
  EXPECT_EQ(sixteen.exit_code, 1);
  EXPECT_HAS(sixteen.err, "num_attention_heads is 8");
}

// bench --tensor-parallel on the CPU: the step figures of the split model and
// rank 0's time in collectives per decode step; a split that does not divide
// is refused naming the count, as score's is.
TEST(TensorParallelCli, BenchTimesTheSplitModelAndItsCollectives) {
  const fs::path model = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora" / "model";
  const std::vector<std::string> args = {
      "bench",       "--model",   model.string(),   "--batch=1,3",      "--prompt=7",
      "--context=5", "--steps=2", "--lora-batch=3", "--lora-context=9", "--lora-rank=4"};
  std::vector<std::string> two = args;
  two.insert(two.end(), {"--tensor-parallel", "2"});
  const CliResult r = run_philora(two);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, "tensor parallel: 2 ranks");
  EXPECT_HAS(r.out, "rank 0's time in collectives per decode step");
  EXPECT_HAS(r.out, "decode batch 3 (ctx 5)");
  EXPECT_HAS(r.out, "3 distinct r4");
  EXPECT_HAS(r.out, "collectives_b1=");
  auto config = model::load_config(model.string());
  ASSERT_TRUE(config.ok());
  std::vector<std::string> three = args;
  three.insert(three.end(), {"--tensor-parallel", "3"});
  const CliResult refused = run_philora(three);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_HAS(refused.err, model::check_tensor_parallel(*config, 3).message());
}

// --device cuda --tensor-parallel N needs NCCL and N GPUs: without them (this
// machine: no GPU, or no libnccl.so.2) every command says which, before
// anything is loaded.
TEST(TensorParallelCli, CudaSaysWhatItLacks) {
  const Status lacks = tensor_parallel_available("cuda", 2);
  if (lacks.ok()) GTEST_SKIP() << "NCCL and 2 GPUs are here: the GPU machine's tests run it";
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";
  const std::string model = (dir / "model").string(), requests = (dir / "requests.jsonl").string();
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"score", "--model", model, "--requests", requests},
                                             {"generate", "--model", model, "--requests", requests},
                                             {"bench", "--model", model}}) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--device", "cuda", "--tensor-parallel", "2"});
    const CliResult r = run_philora(a);
    EXPECT_EQ(r.exit_code, 1) << args[0];
    EXPECT_HAS(r.err, lacks.message());
  }
}

}  // namespace
}  // namespace philora::test
