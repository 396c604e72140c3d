// What `bench --tensor-parallel N` builds, on the CPU's simulated ranks:
// random_weights and assign_random with a rank's TpShard are that rank's part
// of the one-rank model and adapters (the same seeds), so 2 and 4 ranks give
// the logits of one rank (within 1e-5, relative) on a step of three prompts
// of awkward lengths, two random adapters and the base model mixed. And a
// (config, ranks) pair that does not split is refused wherever a sharded
// model is built (the model, its random weights, its adapter slots, its
// checkpoint's weights), naming the count.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/loopback_communicator.h"
#include "engine/plan.h"
#include "engine/step_runner.h"
#include "lora/slots.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"

namespace philora::test {
namespace {

// 8 query heads over 4 kv heads, head_dim 16, hidden 40 (not heads · head_dim),
// intermediate 96, vocab 320, 2 layers.
model::Phi3Config wide_config() {
  model::Phi3Config c;
  c.vocab_size = 320;
  c.hidden_size = 40;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.max_position_embeddings = 4096;
  c.original_max_position_embeddings = 4096;
  return c;
}

constexpr uint64_t kWeightSeed = 99;
constexpr float kAdapterWidth = 0.3f;  // large enough that the adapters move the logits

struct Ranks {
  std::vector<std::unique_ptr<Backend>> backends;  // rank 0 first
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<kv::KvCache> kv;

  Ranks(const model::Phi3Config& c, int64_t n, bool adapters) {
    std::vector<Backend*> all;
    for (int64_t r = 0; r < n; ++r) {
      backends.push_back(std::make_unique<CpuBackend>(1));
      all.push_back(backends.back().get());
    }
    if (n == 1) {
      model = std::make_unique<model::Phi3ForCausalLM>(
          c, model::random_weights(c, *all[0], kWeightSeed), *all[0]);
    } else {
      std::vector<std::unique_ptr<Communicator>> comms = LoopbackGroup::communicators(n);
      std::vector<model::TensorParallelPhi3::Rank> parts;
      for (int64_t r = 0; r < n; ++r)
        parts.push_back(
            {all[size_t(r)],
             model::random_weights(c, *all[size_t(r)], kWeightSeed, 0.02f, model::TpShard{r, n}),
             std::move(comms[size_t(r)])});
      model = std::make_unique<model::TensorParallelPhi3>(c, std::move(parts));
    }
    slots = std::make_unique<lora::AdapterSlots>(all, c, 2);
    if (adapters) {
      slots->assign_random(0, 4, 1.0f, 11, kAdapterWidth);
      slots->assign_random(1, 8, 0.5f, 23, kAdapterWidth);
    }
    kv = std::make_unique<kv::KvCache>(model->make_kv_cache(64, 4));
  }

  // The logits (T, vocab) of every token of three prompts (7, 3 and 19
  // tokens; slots -1, 0, 1) computed in one step.
  std::vector<float> logits(const model::Phi3Config& c) {
    engine::StepRunner runner(*model, *kv, slots.get(), /*use_graphs=*/false);
    std::vector<engine::Sequence> seqs(3);
    const int64_t lengths[] = {7, 3, 19};
    std::vector<engine::SeqWork> work;
    for (size_t i = 0; i < seqs.size(); ++i) {
      engine::Sequence& s = seqs[i];
      s.id = std::to_string(i);
      for (int64_t t = 0; t < lengths[i]; ++t)
        s.tokens.push_back(int32_t((t * 37 + int64_t(i) * 101 + 5) % c.vocab_size));
      s.prompt_len = lengths[i];
      s.lora_slot = int32_t(i) - 1;
      EXPECT_TRUE(kv->pages.reserve(s.pages, lengths[i]));
      work.push_back({&s, lengths[i], true, true, true});
    }
    const engine::StepPlan plan = engine::plan_step(work, kv->page_size);
    EXPECT_TRUE(plan.host_logits);
    const engine::StepResult r = runner.run(plan, {});
    for (engine::Sequence& s : seqs) kv->pages.release(s.pages);
    EXPECT_EQ(r.logits.dim(0), 7 + 3 + 19);
    EXPECT_EQ(r.logits.dim(1), c.vocab_size);
    return std::vector<float>(r.logits.ptr<float>(), r.logits.ptr<float>() + r.logits.numel());
  }
};

double relative_error(const std::vector<float>& want, const std::vector<float>& got) {
  EXPECT_EQ(want.size(), got.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    num += (double(want[i]) - double(got[i])) * (double(want[i]) - double(got[i]));
    den += double(want[i]) * double(want[i]);
  }
  return std::sqrt(num / den);
}

TEST(TensorParallelRandom, RandomWeightsAndAdaptersSplitTheOneRankModel) {
  const model::Phi3Config c = wide_config();
  const std::vector<float> one = Ranks(c, 1, true).logits(c);
  // The adapters matter: without them the logits differ well beyond the tolerance.
  EXPECT_GT(relative_error(one, Ranks(c, 1, false).logits(c)), 1e-2);
  for (const int64_t n : {2, 4}) {
    const double err = relative_error(one, Ranks(c, n, true).logits(c));
    EXPECT_LE(err, 1e-5) << n << " ranks";
  }
}

std::string thrown(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

TEST(TensorParallelRandom, ShardedConstructorsRefuseCountsThatDoNotSplit) {
  const model::Phi3Config c = wide_config();
  const std::string heads = "tensor parallelism over 3 ranks: the model's num_attention_heads is 8";
  CpuBackend cpu(1);
  EXPECT_NE(thrown([&] {
              (void)model::random_weights(c, cpu, 1, 0.02f, model::TpShard{0, 3});
            }).find(heads),
            std::string::npos);
  std::vector<Backend*> three = {&cpu, &cpu, &cpu};
  EXPECT_NE(thrown([&] { lora::AdapterSlots slots(three, c, 1); }).find(heads), std::string::npos);
  std::vector<std::unique_ptr<Communicator>> comms = LoopbackGroup::communicators(3);
  EXPECT_NE(thrown([&] {
              model::Phi3ForCausalLM m(c, model::random_weights(c, cpu, 1), cpu,
                                       model::TpContext{0, 3, comms[0].get()});
            }).find(heads),
            std::string::npos);
  // A rank without its end of a group of that many ranks.
  std::vector<std::unique_ptr<Communicator>> pair = LoopbackGroup::communicators(2);
  EXPECT_NE(thrown([&] {
              model::Phi3ForCausalLM m(c, model::random_weights(c, cpu, 1, 0.02f, {1, 2}), cpu,
                                       model::TpContext{1, 2, pair[0].get()});
            }).find("rank 1 of 2 needs its own end of a group"),
            std::string::npos);
  // The other counts too: heads that split over 4 ranks, an MLP of 90 that does not.
  model::Phi3Config mlp = c;
  mlp.intermediate_size = 90;
  EXPECT_NE(thrown([&] {
              (void)model::random_weights(mlp, cpu, 1, 0.02f, {0, 4});
            }).find("the model's intermediate_size is 90"),
            std::string::npos);
}

}  // namespace
}  // namespace philora::test
