// The engine over a tensor-parallel model (simulated ranks on the CPU): the
// step graphs the CPU backend records (replays of the forward, the path CUDA
// takes for decode), chunked prefill, preemption under a tight KV cache,
// prefix-cache hits and seeded sampling give one rank's tokens, with the
// golden fixtures' adapters mixed in one batch.
#include <gtest/gtest.h>

#include "backend/loopback_communicator.h"
#include "model/engine_rig.h"
#include "model/speculation_rig.h"
#include "model/tensor_parallel.h"

namespace philora::test {
namespace {

// A CPU backend whose attention throws once armed: a rank's device failing mid-forward.
class FailingCpu : public CpuBackend {
 public:
  FailingCpu() : CpuBackend(1) {}
  bool armed = false;
  Tensor attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                   const RopeParams& shape) override {
    if (armed) throw std::runtime_error("the last rank's device failed");
    return CpuBackend::attention(qkv, kv, plan, shape);
  }
};

struct TpRig {
  std::vector<std::unique_ptr<Backend>> backends;  // rank 0 first
  std::unique_ptr<io::TensorSet> tensors;          // the checkpoint the weights may borrow
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::unique_ptr<kv::KvCache> kv;
  std::unique_ptr<engine::Engine> engine;

  TpRig(const std::string& case_name, int64_t ranks, engine::EngineConfig config, int64_t pages) {
    const std::filesystem::path dir = golden_dir(case_name);
    config.wait_for_adapter_loads = true;
    auto cfg = model::load_config((dir / "model").string());
    EXPECT_TRUE(cfg.ok()) << cfg.status().message();
    auto t = io::TensorSet::open_model_dir((dir / "model").string());
    EXPECT_TRUE(t.ok()) << t.status().message();
    tensors = std::make_unique<io::TensorSet>(std::move(*t));
    backends.push_back(std::make_unique<CpuBackend>(2, /*replay_graphs=*/config.step_graphs));
    std::vector<Backend*> all = {backends[0].get()};
    for (int64_t r = 1; r < ranks; ++r) {
      if (r + 1 == ranks) {
        backends.push_back(std::make_unique<FailingCpu>());
      } else {
        backends.push_back(std::make_unique<CpuBackend>(1));
      }
      all.push_back(backends.back().get());
    }
    if (ranks == 1) {
      auto w = model::load_weights(*tensors, *cfg, *all[0]);
      EXPECT_TRUE(w.ok()) << w.status().message();
      model = std::make_unique<model::Phi3ForCausalLM>(*cfg, std::move(*w), *all[0]);
      slots = std::make_unique<lora::AdapterSlots>(*all[0], *cfg, 4);
    } else {
      auto m =
          model::load_tensor_parallel(*tensors, *cfg, all, LoopbackGroup::communicators(ranks));
      EXPECT_TRUE(m.ok()) << m.status().message();
      model = std::move(*m);
      slots = std::make_unique<lora::AdapterSlots>(all, *cfg, 4);
    }
    slots->attach_columns(model->widen_for_lora(32), 32);
    store = std::make_unique<lora::AdapterStore>(model->config(), *slots, lora::StoreOptions{});
    register_adapters(*store, dir / "adapters");
    kv = std::make_unique<kv::KvCache>(model->make_kv_cache(pages, 4));
    engine = std::make_unique<engine::Engine>(*model, *kv, store.get(), config, nullptr);
  }
};

// The fixture's generate requests, greedy and again seeded-sampled, twice
// each (the second copies hit the first's cached prefix pages).
std::vector<engine::Request> requests(const std::string& case_name) {
  std::vector<engine::Request> out;
  for (const auto& line : read_jsonl(golden_dir(case_name) / "generate_requests.jsonl")) {
    engine::Request r = request_of(line);
    r.ignore_eos = true;
    for (int copy = 0; copy < 2; ++copy) {
      engine::Request g = r;
      g.id = r.id + "_greedy_" + std::to_string(copy);
      out.push_back(g);
      engine::Request s = r;
      s.id = r.id + "_sampled_" + std::to_string(copy);
      s.sampling.greedy = false;
      s.sampling.temperature = 0.9f;
      s.sampling.top_p = 0.95f;
      s.sampling.seed = 1234 + uint64_t(out.size());
      out.push_back(s);
    }
  }
  return out;
}

void check(const std::string& case_name, int64_t ranks, engine::EngineConfig config, int64_t pages,
           bool preempts = false) {
  const std::vector<engine::Request> reqs = requests(case_name);
  TpRig one(case_name, 1, config, pages);
  TpRig many(case_name, ranks, config, pages);
  const auto a = run_engine(*one.engine, reqs);
  const auto b = run_engine(*many.engine, reqs);
  ASSERT_EQ(a.size(), reqs.size());
  ASSERT_EQ(b.size(), reqs.size());
  for (const engine::Request& r : reqs) {
    EXPECT_EQ(a.at(r.id).tokens.size(), size_t(r.max_new_tokens)) << r.id;
    EXPECT_EQ(a.at(r.id).tokens, b.at(r.id).tokens) << r.id << " at " << ranks << " ranks";
  }
  if (config.step_graphs) {
    EXPECT_GT(many.engine->runner_stats().graph_steps, 0) << "decode steps replayed no graph";
  }
  EXPECT_EQ(one.engine->stats().preemptions, many.engine->stats().preemptions);
  if (preempts) {
    EXPECT_GT(many.engine->stats().preemptions, 0);
  }
}

engine::EngineConfig config(int64_t budget, int64_t running, bool graphs) {
  engine::EngineConfig c;
  c.max_batched_tokens = budget;
  c.max_running = running;
  c.step_graphs = graphs;
  c.prefix_cache = true;
  return c;
}

TEST(TensorParallelEngine, GraphsChunksAndSamplingMatchOneRank) {
  for (const std::string name : {"gqa_multi_lora", "mqa_longrope"})
    for (const int64_t ranks : {2, 4}) {
      SCOPED_TRACE(name + " at " + std::to_string(ranks) + " ranks");
      check(name, ranks, config(/*budget=*/16, /*running=*/32, /*graphs=*/true), 512);
    }
}

// Tree speculation over the split model (n-gram chains, every one verified):
// an alternative chain's copy of its sequence's partial page is made in every
// rank's pools (Phi3ForCausalLM::copy_kv_pages), and the output is one rank's
// plain greedy output, with alternatives winning; every page comes back.
TEST(TensorParallelEngine, TreeSpeculationMatchesOneRankPlain) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = test::long_requests(name);
  for (engine::Request& r : reqs) r.logprobs.reset();  // tokens are compared, not logprobs
  const engine::EngineConfig plain = config(4096, 64, false);
  engine::EngineConfig tree = plain;
  tree.speculate_ngram = 4;
  tree.speculate_paths = 4;
  tree.speculate_row_cost = 0.0;  // every chain, every step
  TpRig one(name, 1, plain, 512);
  const auto want = run_engine(*one.engine, reqs);
  for (const int64_t ranks : {2, 4}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks");
    TpRig many(name, ranks, tree, 512);
    const auto got = run_engine(*many.engine, reqs);
    for (const engine::Request& r : reqs)
      EXPECT_EQ(got.at(r.id).tokens, want.at(r.id).tokens) << r.id;
    EXPECT_GT(many.engine->stats().spec_alt_chains, 0);
    EXPECT_GT(many.engine->stats().spec_alt_tokens, 0) << "no alternative chain won";
    EXPECT_EQ(many.kv->pages.num_held(), 0);
  }
}

TEST(TensorParallelEngine, PreemptionUnderATightCacheMatchesOneRank) {
  // Few pages: sequences are preempted and recomputed (eager steps).
  check("gqa_multi_lora", 4, config(64, 32, false), 24, /*preempts=*/true);
}

// A rank that fails mid-forward (its attention throws while the other ranks
// wait for it in the all-reduce after o_proj) ends the step with its own
// error on the engine's thread: the waiting ranks are released, none hangs.
TEST(TensorParallelEngine, ARankThatFailsEndsTheStepWithItsError) {
  TpRig rig("gqa_multi_lora", 4, config(64, 8, false), 64);
  static_cast<FailingCpu&>(*rig.backends.back()).armed = true;
  for (const engine::Request& r : requests("gqa_multi_lora"))
    ASSERT_TRUE(rig.engine->add_request(r).ok());
  try {
    (void)rig.engine->step();
    ADD_FAILURE() << "the step did not fail";
  } catch (const std::runtime_error& e) {
    EXPECT_HAS(std::string(e.what()), "the last rank's device failed");
  }
  // As the server does after a failed step: the requests in flight end, and the
  // group works again for the next ones (the tokens one rank's engine gives).
  for (const engine::Request& r : requests("gqa_multi_lora")) rig.engine->abort(r.id);
  (void)rig.engine->step();
  static_cast<FailingCpu&>(*rig.backends.back()).armed = false;
  std::vector<engine::Request> again = requests("gqa_multi_lora");
  for (engine::Request& r : again) r.id += "_after";
  TpRig one("gqa_multi_lora", 1, config(64, 8, false), 64);
  const auto a = run_engine(*one.engine, again);
  const auto b = run_engine(*rig.engine, again);
  ASSERT_EQ(b.size(), again.size());
  for (const engine::Request& r : again) EXPECT_EQ(a.at(r.id).tokens, b.at(r.id).tokens) << r.id;
}

}  // namespace
}  // namespace philora::test
