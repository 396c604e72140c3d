// What the engine's sampling, stopping and logprobs tests share: a golden
// case's model and adapters under one engine on the CPU backend, a tokenizer
// that fits the golden models' 200-token vocabulary, the HF fixtures, and a
// loop that runs the engine to the end keeping every step's output.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace philora::test {

inline std::filesystem::path golden_dir(const std::string& name) {
  return std::filesystem::path(PHILORA_TEST_DATA) / "golden" / name;
}

// Token i's text in the test tokenizer: ids 0, 1, 2 are the special <unk>,
// <s>, </s>; every other id is a letter and a digit ("b7" for 17), so that
// texts are easy to cut and a stop string can span two tokens.
inline std::string token_text(int32_t id) {
  if (id == 0) return "<unk>";
  if (id == 1) return "<s>";
  if (id == 2) return "</s>";
  return std::string(1, char('a' + (id / 10) % 26)) + std::string(1, char('0' + id % 10));
}

// decode(ids) for the test tokenizer: the pieces joined, specials left out or not.
inline std::string text_of(const std::vector<int32_t>& ids, bool skip_special = true) {
  std::string s;
  for (int32_t id : ids)
    if (!(skip_special && id <= 2)) s += token_text(id);
  return s;
}

// tokenizer.json of the test tokenizer (a BPE without merges, a Fuse decoder).
inline std::string test_tokenizer_json(int32_t vocab = 200) {
  nlohmann::json v = nlohmann::json::object();
  for (int32_t id = 0; id < vocab; ++id) v[token_text(id)] = id;
  nlohmann::json added = nlohmann::json::array();
  for (int32_t id = 0; id < 3; ++id)
    added.push_back({{"id", id},
                     {"content", token_text(id)},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const nlohmann::json t = {{"version", "1.0"},
                            {"truncation", nullptr},
                            {"padding", nullptr},
                            {"added_tokens", added},
                            {"normalizer", nullptr},
                            {"pre_tokenizer", nullptr},
                            {"post_processor", nullptr},
                            {"decoder", {{"type", "Fuse"}}},
                            {"model",
                             {{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", "<unk>"},
                              {"continuing_subword_prefix", nullptr},
                              {"end_of_word_suffix", nullptr},
                              {"fuse_unk", true},
                              {"byte_fallback", false},
                              {"vocab", v},
                              {"merges", nlohmann::json::array()}}}};
  return t.dump();
}

// The model of a HF model directory (config.json, *.safetensors) on `backend`.
inline std::unique_ptr<model::Phi3ForCausalLM> load_model(const std::filesystem::path& dir,
                                                          Backend& backend) {
  auto cfg = model::load_config(dir.string());
  EXPECT_TRUE(cfg.ok()) << cfg.status().message();
  auto tensors = io::TensorSet::open_model_dir(dir.string());
  EXPECT_TRUE(tensors.ok()) << tensors.status().message();
  auto weights = model::load_weights(*tensors, *cfg, backend);
  EXPECT_TRUE(weights.ok()) << weights.status().message();
  return std::make_unique<model::Phi3ForCausalLM>(*cfg, std::move(*weights), backend);
}

// Registers each adapter directory under `dir`, when there is one, by its name.
inline void register_adapters(lora::AdapterStore& store, const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      store.register_dir(e.path().filename().string(), e.path().string());
}

// A golden case's model and adapters, a paged KV cache (pages of 4 tokens)
// and an engine over them, on the CPU backend.
struct EngineRig {
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::unique_ptr<kv::KvCache> kv;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<engine::Engine> engine;

  EngineRig(const std::string& case_name, engine::EngineConfig config, int64_t pages = 512,
            bool with_tokenizer = true, int num_slots = 4, lora::StoreOptions store_options = {}) {
    const std::filesystem::path dir = golden_dir(case_name);
    // A schedule (whether a scenario preempts) must not depend on how fast
    // the loader thread reads the disk, unless the test holds loads itself.
    if (!store_options.before_load) config.wait_for_adapter_loads = true;
    backend = std::make_unique<CpuBackend>(2, config.step_graphs);
    model = load_model(dir / "model", *backend);
    slots = std::make_unique<lora::AdapterSlots>(*backend, model->config(), num_slots);
    store = std::make_unique<lora::AdapterStore>(model->config(), *slots, std::move(store_options));
    register_adapters(*store, dir / "adapters");
    kv = std::make_unique<kv::KvCache>(*backend, model->config().num_hidden_layers, pages, 4,
                                       model->config().num_key_value_heads,
                                       model->config().head_dim);
    if (with_tokenizer) {
      auto t = tokenizer::Tokenizer::from_json_string(
          test_tokenizer_json(int32_t(model->config().vocab_size)));
      EXPECT_TRUE(t.ok()) << t.status().message();
      tokenizer = std::move(*t);
    }
    engine = std::make_unique<engine::Engine>(*model, *kv, store.get(), config, tokenizer.get());
  }
};

// A request's outputs: every step's, and all of them merged.
struct Run {
  std::vector<engine::StepOutput> steps;
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<engine::PositionLogprobs> logprobs;
  std::optional<std::vector<engine::PositionLogprobs>> prompt_logprobs;
  engine::FinishReason finish = engine::FinishReason::none;
  std::string stop_string;
  uint64_t seed = 0;
};

// Adds the requests and steps the engine until it has no work.
inline std::map<std::string, Run> run_engine(engine::Engine& e,
                                             const std::vector<engine::Request>& requests) {
  for (const engine::Request& r : requests) {
    const Status s = e.add_request(r);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  std::map<std::string, Run> runs;
  for (int guard = 0; e.has_work() && guard < 100000; ++guard)
    for (engine::StepOutput& o : e.step()) {
      EXPECT_TRUE(o.error.empty()) << o.id << ": " << o.error;
      Run& r = runs[o.id];
      r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      r.text += o.text;
      r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.prompt_logprobs) {
        EXPECT_FALSE(r.prompt_logprobs) << o.id << ": prompt logprobs twice";
        r.prompt_logprobs = o.prompt_logprobs;
      }
      if (o.finished()) {
        r.finish = o.finish;
        r.stop_string = o.stop_string;
      }
      r.seed = o.seed;
      r.steps.push_back(std::move(o));
    }
  EXPECT_FALSE(e.has_work());
  return runs;
}

// A golden request line as an engine::Request (greedy, its max_new_tokens).
inline engine::Request request_of(const nlohmann::json& line) {
  engine::Request r;
  r.id = line["id"].get<std::string>();
  r.prompt = line["input_ids"].get<std::vector<int32_t>>();
  if (!line["adapter"].is_null()) r.adapter = line["adapter"].get<std::string>();
  r.max_new_tokens = line.value("max_new_tokens", int64_t(0));
  r.ignore_eos = line.value("ignore_eos", false);
  return r;
}

// HF's logits of every position of a score request, float64: (prompt_len, vocab).
inline std::vector<std::vector<double>> hf_logits(const std::string& case_name,
                                                  const std::string& id) {
  auto ref = io::TensorSet::open_file((golden_dir(case_name) / "score_ref.safetensors").string());
  EXPECT_TRUE(ref.ok()) << ref.status().message();
  std::vector<std::vector<double>> rows;
  if (!ref.ok()) return rows;
  const Tensor& t = ref->find(id)->view;
  for (int64_t p = 0; p < t.dim(0); ++p) {
    std::vector<double> row(static_cast<size_t>(t.dim(1)));
    for (int64_t v = 0; v < t.dim(1); ++v)
      row[size_t(v)] = double(t.ptr<float>()[p * t.dim(1) + v]);
    rows.push_back(std::move(row));
  }
  return rows;
}

// log_softmax in float64.
inline std::vector<double> log_softmax(const std::vector<double>& x) {
  double max = -INFINITY;
  for (double v : x) max = std::max(max, v);
  double sum = 0;
  for (double v : x) sum += std::exp(v - max);
  std::vector<double> lp(x.size());
  for (size_t i = 0; i < x.size(); ++i) lp[i] = x[i] - max - std::log(sum);
  return lp;
}

}  // namespace philora::test
