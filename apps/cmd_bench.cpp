// philora bench: a Phi-3-mini-shaped model with random weights, no download.
// Prints a table; the last line is a one-line summary.
#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "common.h"
#include "engine/plan.h"
#include "model/weights.h"

namespace philora::app {

namespace {

struct BenchOptions {
  std::string device = "cpu";
  int64_t layers = 32;
  int64_t prompt = 512;
  std::vector<int64_t> batches = {1};
  int64_t context = 512;
  int64_t decode_steps = 4;
};

// Phi-3-mini-4k-instruct's shape.
model::Phi3Config phi3_mini(int64_t layers) {
  model::Phi3Config c;
  c.vocab_size = 32064;
  c.hidden_size = 3072;
  c.intermediate_size = 8192;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.head_dim = 96;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.max_position_embeddings = 4096;
  c.original_max_position_embeddings = 4096;
  c.sliding_window = 2047;
  return c;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run_bench(const BenchOptions& o) {
  auto backend = make_backend(o.device);
  if (!backend) return fail(backend.status());
  Backend& b = **backend;
  model::Phi3Config c = phi3_mini(o.layers);
  auto t0 = std::chrono::steady_clock::now();
  model::Phi3ForCausalLM m(c, model::random_weights(c, b, 1234), b);
  b.synchronize();
  std::cout << fmt::format("model: Phi-3-mini shape, {} layers, random weights on {} ({:.1f} s to build)\n",
                           c.num_hidden_layers, b.name(), seconds_since(t0));
  std::cout << fmt::format("{:<40} {:>14}\n", "figure", "value");
  std::ostringstream summary;

  // Prefill: one prompt, logits of its last token only.
  {
    int64_t max_ctx = std::max(o.prompt, o.context + o.decode_steps);
    int64_t pages = 0;
    for (int64_t bs : o.batches) pages = std::max(pages, bs * ((max_ctx + 15) / 16 + 1));
    pages = std::max(pages, (o.prompt + 15) / 16 + 1);
    kv::KvCache kv(b, c.num_hidden_layers, pages, 16, c.num_key_value_heads, c.head_dim);
    engine::Sequence s;
    s.id = "prompt";
    for (int64_t i = 0; i < o.prompt; ++i) s.tokens.push_back(int32_t((i * 7919) % c.vocab_size));
    s.prompt_len = o.prompt;
    if (auto st = engine::reserve_pages(s, o.prompt, kv); !st) return fail(st);
    auto plan = engine::plan_step({{&s, o.prompt, true}}, 16, false);
    auto in = engine::stage(b, plan, c, 0);
    m.forward(in, kv, nullptr);  // warm-up
    b.synchronize();
    t0 = std::chrono::steady_clock::now();
    m.forward(in, kv, nullptr);
    b.synchronize();
    const double dt = seconds_since(t0);
    std::cout << fmt::format("{:<40} {:>10.1f} ms\n", fmt::format("prefill {} tokens", o.prompt), dt * 1e3);
    std::cout << fmt::format("{:<40} {:>10.1f} tok/s\n", "prefill throughput", double(o.prompt) / dt);
    summary << fmt::format("prefill{}={:.1f} tok/s", o.prompt, double(o.prompt) / dt);
    engine::release_pages(s, kv);

    // Decode: `bs` sequences with `context` tokens already cached, one token each per step.
    for (int64_t bs : o.batches) {
      std::vector<engine::Sequence> seqs(static_cast<size_t>(bs));
      for (int64_t i = 0; i < bs; ++i) {
        engine::Sequence& q = seqs[size_t(i)];
        q.id = std::to_string(i);
        q.tokens.assign(size_t(o.context + o.decode_steps + 1), int32_t(i % c.vocab_size));
        q.num_computed = o.context;
        if (auto st = engine::reserve_pages(q, o.context + o.decode_steps + 1, kv); !st) return fail(st);
      }
      double total = 0;
      for (int64_t step = 0; step <= o.decode_steps; ++step) {
        std::vector<engine::SeqWork> work;
        for (auto& q : seqs) work.push_back({&q, 1, true});
        auto p = engine::plan_step(work, 16, false);
        auto si = engine::stage(b, p, c, 0);
        b.synchronize();
        t0 = std::chrono::steady_clock::now();
        m.forward(si, kv, nullptr);
        b.synchronize();
        if (step > 0) total += seconds_since(t0);  // step 0 warms up
        for (auto& q : seqs) ++q.num_computed;
      }
      const double step_s = total / double(o.decode_steps);
      std::cout << fmt::format("{:<40} {:>10.1f} tok/s  ({:.1f} ms/step)\n",
                               fmt::format("decode batch {} ctx {}", bs, o.context), double(bs) / step_s,
                               step_s * 1e3);
      summary << fmt::format(" decode_b{}={:.1f} tok/s", bs, double(bs) / step_s);
      for (auto& q : seqs) engine::release_pages(q, kv);
    }
  }
  std::cout << "summary: " << b.name() << " " << summary.str() << "\n";
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Phi-3-mini-shaped model with random weights: speed");
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--layers", o->layers, "layers (32 for the real shape)")->check(CLI::Range(1, 64));
  cmd->add_option("--prompt", o->prompt, "prompt tokens for the prefill figure")->check(CLI::Range(1, 131072));
  cmd->add_option("--batch", o->batches, "decode batch sizes")->delimiter(',');
  cmd->add_option("--context", o->context, "cached tokens per sequence for decode")->check(CLI::Range(0, 131072));
  cmd->add_option("--decode-steps", o->decode_steps, "timed decode steps")->check(CLI::Range(1, 1000));
  cmd->callback([o, &rc] { rc = run_bench(*o); });
}

}  // namespace philora::app
