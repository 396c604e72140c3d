// philora bench: a Phi-3-mini-shaped model (3072 hidden, 32 layers, 32 heads,
// 8192 intermediate, 32064 vocab) with random weights built on the device — no
// download — or the checkpoint of --model, measured against the device's own
// ceilings, measured in the same run (copy bandwidth, cuBLASLt bf16 rate).
// Prints a table; the last line is a one-line summary. --tensor-parallel N
// times the model split over N ranks (model/tensor_parallel.h; ideals are N
// devices'), on the CPU also rank 0's time inside collectives per decode step.
//
// Ideals: a decode step must read every weight once (the embedding only for
// its B rows) plus the K/V of every cached token: bytes / copy bandwidth. A
// prompt must do 2·params·P FLOPs plus causal attention: FLOPs / matmul rate.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "backend/ceilings.h"
#include "backend/tensor_parallel_group.h"
#include "bench_workload.h"
#include "commands.h"
#include "common.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "engine/step_runner.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"

namespace philora::app {

namespace {

struct BenchOptions {
  std::string device = "cpu";
  int64_t tensor_parallel = 1;  // ranks the model is split over (model/tensor_parallel.h)
  bool simulate_ranks = false;  // on cuda: every rank on one GPU (results, not speed)
  std::string model_dir;  // empty: the Phi-3-mini shape with random weights
  int64_t layers = 32;
  std::vector<int64_t> prompts = {512, 2048};
  std::vector<int64_t> batches = {1, 8, 32, 64, 128, 256};
  int64_t context = 512;
  int64_t steps = 10;
  int64_t lora_batch = 64;
  int64_t lora_context = 1024;
  int64_t lora_rank = 16;
  bool skip_lora = false;
  int64_t lora_columns = -1;  // -1: lora_rank (rounded up to 8) per adapter
  double mem_fraction = 0.9;
  bool enforce_eager = false;
  int64_t speculate = 0;  // --speculate ngram:K / medusa:K: also time verifying 1 .. K drafts at batch 1
  bool sampling_overhead = false;  // also time decode with logprobs and penalties on every row
  int64_t prefix_hit = 0;  // > 0: TTFT with this many prompt tokens cached vs none
};

model::Phi3Config phi3_mini(int64_t layers) {  // microsoft/Phi-3-mini-4k-instruct
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

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Counts {
  double layer_params = 0;  // per layer matrices
  double lm_head_params = 0;
  double kv_bytes_per_token = 0;  // all layers, K and V
};

// Rank 0's collectives with the host time spent inside them (tensor
// parallelism): on the CPU's simulated ranks, the time the rank waits for the
// others and sums or copies; an asynchronous communicator (NCCL) would show
// only the time to queue its calls, so the bench reports it for the CPU only.
class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int64_t rank() const override { return inner_->rank(); }
  int64_t world_size() const override { return inner_->world_size(); }
  void all_reduce_sum(Tensor& x) override {
    timed(all_reduce_, [&] { inner_->all_reduce_sum(x); });
  }
  void all_gather_cols(const Tensor& x, Tensor& out) override {
    timed(gather_, [&] { inner_->all_gather_cols(x, out); });
  }
  void gather_cols(const Tensor& x, Tensor* out) override {
    timed(gather_, [&] { inner_->gather_cols(x, out); });
  }
  void abort() override { inner_->abort(); }
  void reset() override { inner_->reset(); }
  void begin_step() override { inner_->begin_step(); }
  bool capturable() const override { return inner_->capturable(); }

  struct Totals {
    double seconds = 0;
    int64_t calls = 0;
  };
  Totals all_reduce() const { return all_reduce_; }
  Totals gather() const { return gather_; }

 private:
  template <typename F>
  static void timed(Totals& t, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++t.calls;
  }
  std::unique_ptr<Communicator> inner_;
  Totals all_reduce_, gather_;
};

// The model a bench times: one rank, or --tensor-parallel N ranks (rank 0 on
// the bench's backend, its collectives timed).
struct BenchModel {
  std::vector<std::unique_ptr<Backend>> peer_backends;  // ranks 1 .. N-1
  std::vector<Backend*> backends;                       // every rank's, rank 0 first
  std::unique_ptr<model::Phi3ForCausalLM> model;
  const TimedCommunicator* collectives = nullptr;  // rank 0's; null with one rank
};

Expected<BenchModel> build_bench_model(const BenchCheckpoint& checkpoint, bool random, Backend& b,
                                       int64_t ranks, bool simulate) {
  BenchModel m;
  m.backends = {&b};
  if (ranks == 1) {
    auto weights = bench_weights(checkpoint, random, b);
    if (!weights) return weights.status();
    m.model = std::make_unique<model::Phi3ForCausalLM>(checkpoint.config, std::move(*weights), b);
    return m;
  }
  PHILORA_RETURN_IF_ERROR(model::check_tensor_parallel(checkpoint.config, ranks));
  PHILORA_ASSIGN_OR_RETURN(m.peer_backends, tensor_parallel_backends(b, ranks, simulate));
  for (const auto& p : m.peer_backends) m.backends.push_back(p.get());
  PHILORA_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Communicator>> comms,
                           tensor_parallel_communicators(m.backends, simulate));
  auto timed = std::make_unique<TimedCommunicator>(std::move(comms[0]));
  m.collectives = timed.get();
  comms[0] = std::move(timed);
  std::vector<model::TensorParallelPhi3::Rank> parts;
  for (int64_t r = 0; r < ranks; ++r) {
    auto weights =
        bench_weights(checkpoint, random, *m.backends[size_t(r)], model::TpShard{r, ranks});
    if (!weights) return weights.status();
    parts.push_back({m.backends[size_t(r)], std::move(*weights), std::move(comms[size_t(r)])});
  }
  m.model = std::make_unique<model::TensorParallelPhi3>(checkpoint.config, std::move(parts));
  return m;
}

Counts count(const model::Phi3Config& c, size_t elem) {
  Counts n;
  const double h = double(c.hidden_size);
  n.layer_params =
      double(c.num_hidden_layers) *
      (double(c.qkv_size()) * h + h * double(c.q_size()) + 2.0 * double(c.intermediate_size) * h +
       h * double(c.intermediate_size) + 2 * h);
  n.lm_head_params = double(c.vocab_size) * h + h;
  n.kv_bytes_per_token = double(c.num_hidden_layers) * 2.0 * double(c.kv_size()) * double(elem);
  return n;
}

// Sequences with `context` tokens already cached; times `steps` decode steps
// (plan, forward, greedy token selection on the device, ids back to the host),
// after one warm-up step (which records the step graph). `host_seconds`: the
// median host time of a step before it waits for the GPU (planning, staging,
// launching or replaying) — what the GPU would idle for between steps.
// `collectives` (tensor parallelism; may be null) and `collective_seconds`:
// rank 0's mean time per timed step inside all-reduces and the logits' gather.
Expected<double> time_decode(model::Phi3ForCausalLM& m, kv::KvCache& kv,
                             const lora::AdapterSlots* slots, int64_t batch, int64_t context,
                             int64_t steps, const std::vector<int32_t>& slot_of, bool graphs,
                             double* host_seconds = nullptr, int64_t rows = 1,
                             const engine::SampleRow& sample = engine::SampleRow(),
                             const Tensor& counts = Tensor(),
                             const TimedCommunicator* collectives = nullptr,
                             double* collective_seconds = nullptr) {
  const model::Phi3Config& c = m.config();
  Backend& b = m.backend();
  engine::StepRunner runner(m, kv, slots, graphs);
  std::vector<engine::Sequence> seqs(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    engine::Sequence& q = seqs[size_t(i)];
    q.id = std::to_string(i);
    const int64_t len = context + (steps + 1) * rows + 2;
    q.tokens.assign(size_t(len), int32_t((i * 131) % c.vocab_size));
    q.num_computed = context;
    q.lora_slot = slot_of.empty() ? -1 : slot_of[size_t(i) % slot_of.size()];
    if (!kv.pages.reserve(q.pages, len))
      return Status::errorf("the KV cache has no room for {} sequences of {} tokens", batch, len);
  }
  std::vector<double> times, host;
  double in_collectives = 0;
  for (int64_t step = 0; step <= steps; ++step) {
    b.synchronize();
    const auto t0 = Clock::now();
    const double c0 =
        collectives ? collectives->all_reduce().seconds + collectives->gather().seconds : 0;
    std::vector<engine::SeqWork> work;
    // rows > 1: a speculative verification step (rows - 1 drafts, every row sampled).
    for (auto& q : seqs) work.push_back({&q, rows, true, rows > 1, false});
    auto plan = engine::plan_step(work, kv.page_size);
    const double planned = since(t0), before = runner.stats().host_seconds;
    std::vector<engine::SampleRow> sample_rows(size_t(batch * rows), sample);
    for (size_t r = 0; r < sample_rows.size() && sample.count_row >= 0; ++r)
      sample_rows[r].count_row = int32_t(r / size_t(rows));  // the sequence's row of counts
    runner.run(plan, sample_rows, counts);
    if (step > 0) {
      times.push_back(since(t0));
      host.push_back(planned + runner.stats().host_seconds - before);
      if (collectives)
        in_collectives += collectives->all_reduce().seconds + collectives->gather().seconds - c0;
    }
    for (auto& q : seqs) q.num_computed += rows;
  }
  for (auto& q : seqs) kv.pages.release(q.pages);
  if (host_seconds) *host_seconds = median(host);
  if (collective_seconds) *collective_seconds = in_collectives / double(steps);
  return median(times);
}

Expected<double> time_prefill(model::Phi3ForCausalLM& m, kv::KvCache& kv, int64_t prompt) {
  const model::Phi3Config& c = m.config();
  Backend& b = m.backend();
  engine::StepRunner runner(m, kv, nullptr, false);
  std::vector<double> times;
  for (int rep = 0; rep < 11; ++rep) {
    engine::Sequence s;
    s.id = "prompt";
    for (int64_t i = 0; i < prompt; ++i)
      s.tokens.push_back(int32_t((i * 7919 + rep) % c.vocab_size));
    s.prompt_len = prompt;
    if (!kv.pages.reserve(s.pages, prompt))
      return Status::errorf("the KV cache has no room for a prompt of {} tokens", prompt);
    b.synchronize();
    const auto t0 = Clock::now();
    auto plan = engine::plan_step({{&s, prompt, true}}, kv.page_size);
    runner.run(plan, {engine::SampleRow{}});  // the first token, greedy
    // Rep 0 warms up; the median of 10 (single runs vary by ±1 ms on an H200).
    if (rep > 0) times.push_back(since(t0));
    kv.pages.release(s.pages);
  }
  return median(times);
}

int run_bench(const BenchOptions& o) {
  // --device cuda --tensor-parallel N: NCCL and N GPUs, or an error naming them first.
  if (o.device == "cuda")
    if (Status s = tensor_parallel_available("cuda", o.tensor_parallel, o.simulate_ranks); !s.ok())
      return fail(s);
  auto backend = make_backend(o.device);
  if (!backend) return fail(backend.status());
  Backend& b = **backend;
  auto ceilings = measure_ceilings(b);
  const bool have_ceilings = ceilings.ok();

  auto checkpoint = open_bench_checkpoint(o.model_dir, o.layers);
  if (!checkpoint) return fail(checkpoint.status());
  const model::Phi3Config& c = checkpoint->config;
  const size_t elem = dtype_size(b.compute_dtype());
  const Counts n = count(c, elem);
  auto t0 = Clock::now();
  auto built = build_bench_model(*checkpoint, o.model_dir.empty(), b, o.tensor_parallel, o.simulate_ranks);
  if (!built) return fail(built.status());
  model::Phi3ForCausalLM& m = *built->model;
  for (Backend* rank : built->backends) rank->synchronize();
  const double build_s = since(t0);
  // Rank 0's time in collectives: measured on the CPU's simulated ranks only
  // (NCCL's calls return once queued).
  const TimedCommunicator* collectives = b.device() == Device::cpu ? built->collectives : nullptr;

  if (o.model_dir.empty())
    std::cout << fmt::format(
        "model: Phi-3-mini shape ({} layers), random {} weights on {}, built in {:.1f} s\n",
        c.num_hidden_layers, dtype_name(b.compute_dtype()), b.name(), build_s);
  else
    std::cout << fmt::format(
        "model: {} ({} layers, hidden {}, vocab {}), {} weights on {}, loaded in {:.2f} s\n",
        o.model_dir, c.num_hidden_layers, c.hidden_size, c.vocab_size,
        dtype_name(b.compute_dtype()), b.description(), build_s);
  if (o.tensor_parallel > 1)
    std::cout << fmt::format(
        "tensor parallel: {} ranks ({} heads, {} kv heads, intermediate {}, vocab {} each){}\n",
        o.tensor_parallel, c.num_attention_heads / o.tensor_parallel,
        model::shard_config(c, o.tensor_parallel).num_key_value_heads,
        c.intermediate_size / o.tensor_parallel, c.vocab_size / o.tensor_parallel,
        b.device() == Device::cpu ? "; simulated: threads of this process, one core each"
        : o.simulate_ranks
            ? "; simulated on one GPU, collectives copied through the host: these times are not "
              "the split model's"
            : "");
  if (have_ceilings)
    std::cout << fmt::format(
        "device: {}; copy {:.0f} GB/s (read+write); cuBLASLt bf16 {:.0f} TFLOP/s\n",
        ceilings->device_name, ceilings->copy_bytes_per_s / 1e9,
        ceilings->matmul_flops_per_s / 1e12);
  else
    std::cout << "device: " << b.name() << " (" << ceilings.status().message()
              << "; no ideal ratios)\n";
  std::cout << fmt::format("{:<44} {:>16} {:>12} {:>8}\n", "figure", "value", "ideal", "% ideal");
  auto row = [&](const std::string& what, const std::string& value, double ideal_s, double actual_s,
                 const std::string& ideal_text) {
    if (have_ceilings && ideal_s > 0)
      std::cout << fmt::format("{:<44} {:>16} {:>12} {:>7.1f}%\n", what, value, ideal_text,
                               100.0 * ideal_s / actual_s);
    else
      std::cout << fmt::format("{:<44} {:>16}\n", what, value);
  };
  std::ostringstream summary;
  // The memory ceiling is the measured copy rate counting bytes read plus bytes
  // written (METHOD.md); a decode step's floor is the bytes it must read over it.
  // With tensor parallelism the ideal is N devices' (N × rank 0's ceilings):
  // each rank reads and computes its share.
  const double ranks = double(o.tensor_parallel);
  const double copy_bw = have_ceilings ? ranks * ceilings->copy_bytes_per_s : 0;
  const double mm_rate = have_ceilings ? ranks * ceilings->matmul_flops_per_s : 0;

  int64_t max_tokens = 0;
  for (int64_t p : o.prompts) max_tokens = std::max(max_tokens, p + 16);
  for (int64_t bs : o.batches)
    max_tokens = std::max(max_tokens, bs * (o.context + o.steps + 2 + 16));
  if (!o.skip_lora)
    max_tokens = std::max(max_tokens, o.lora_batch * (o.lora_context + o.steps + 2 + 16));
  max_tokens = std::max(max_tokens, o.context + (o.steps + 1) * (o.speculate + 1) + 2 + 16);
  max_tokens = std::max(max_tokens, 4 * (o.prefix_hit + 64));
  const int64_t page = 16;
  kv::KvCache kv = m.make_kv_cache(max_tokens / page + 1, page);  // every rank's pools

  // Decode at each batch size.
  std::ostringstream host_notes, collective_notes;
  for (int64_t bs : o.batches) {
    double host_s = 0, collective_s = 0;
    auto dt = time_decode(m, kv, nullptr, bs, o.context, o.steps, {}, !o.enforce_eager, &host_s, 1,
                          engine::SampleRow(), Tensor(), collectives, &collective_s);
    if (!dt) return fail(dt.status());
    host_notes << fmt::format(" b{} {:.0f} us ({:.1f}%)", bs, host_s * 1e6, 100.0 * host_s / *dt);
    collective_notes << fmt::format(" b{} {:.3f} ms of {:.3f} ms ({:.1f}%)", bs, collective_s * 1e3,
                                    *dt * 1e3, 100.0 * collective_s / *dt);
    if (collectives) summary << fmt::format("collectives_b{}={:.3f}ms ", bs, collective_s * 1e3);
    const double bytes = (n.layer_params + n.lm_head_params) * double(elem) +
                         double(bs) * double(c.hidden_size) * double(elem) +
                         double(bs) * double(o.context) * n.kv_bytes_per_token;
    const double ideal = copy_bw > 0 ? bytes / copy_bw : 0;
    row(fmt::format("decode batch {} (ctx {})", bs, o.context),
        fmt::format("{:.1f} tok/s", double(bs) / *dt), ideal, *dt,
        fmt::format("{:.0f} tok/s", ideal > 0 ? double(bs) / ideal : 0.0));
    summary << fmt::format("decode_b{}={:.0f}tok/s ", bs, double(bs) / *dt);
  }

  std::cout << "host time per decode step before it waits for the device:" << host_notes.str()
            << "\n";
  if (collectives)
    std::cout << fmt::format(
        "rank 0's time in collectives per decode step ({} all-reduces and 1 gather of the "
        "logits, waits for the other ranks included):{}\n",
        2 * c.num_hidden_layers, collective_notes.str());

  // Logprobs and penalties: every row asks the top 20 logprobs and applies
  // repetition, frequency and presence penalties over its sequence's row of
  // token counts (issue 17: at most 3% over the plain step at batch 64).
  if (o.sampling_overhead) {
    engine::SampleRow heavy;
    heavy.logprobs = int32_t(kMaxLogprobs);
    heavy.repetition_penalty = 1.1f;
    heavy.frequency_penalty = 0.2f;
    heavy.presence_penalty = 0.1f;
    heavy.count_row = 0;
    for (int64_t bs : o.batches) {
      Tensor counts = b.alloc(DType::i32, {bs, c.vocab_size});
      for (int64_t r = 0; r < bs; ++r) {  // each row: a prompt of 64 tokens and 16 generated
        std::vector<int32_t> tokens;
        for (int64_t i = 0; i < 80; ++i) tokens.push_back(int32_t((r * 131 + i * 17) % c.vocab_size));
        b.reset_token_counts(counts, r, b.upload_i32(tokens), 64);
      }
      auto plain = time_decode(m, kv, nullptr, bs, o.context, o.steps, {}, !o.enforce_eager);
      if (!plain) return fail(plain.status());
      auto with = time_decode(m, kv, nullptr, bs, o.context, o.steps, {}, !o.enforce_eager, nullptr,
                              1, heavy, counts);
      if (!with) return fail(with.status());
      std::cout << fmt::format("{:<44} {:>13.3f} ms {:>12} {:>7.3f}x\n",
                               fmt::format("logprobs 20 + penalties, batch {}", bs), *with * 1e3,
                               "vs plain", *with / *plain);
      summary << fmt::format("sampling_b{}={:.3f}x ", bs, *with / *plain);
    }
  }

  // Speculative decoding: a step verifying k drafts (k + 1 rows, all sampled;
  // a step graph, as the engine runs such steps) against a plain decode step,
  // batch 1.
  if (o.speculate > 0) {
    auto plain = time_decode(m, kv, nullptr, 1, o.context, o.steps, {}, !o.enforce_eager);
    if (!plain) return fail(plain.status());
    for (int64_t k = 1; k <= o.speculate; ++k) {
      auto dt = time_decode(m, kv, nullptr, 1, o.context, o.steps, {}, !o.enforce_eager, nullptr,
                            k + 1);
      if (!dt) return fail(dt.status());
      std::cout << fmt::format("{:<44} {:>13.3f} ms {:>12} {:>7.3f}x\n",
                               fmt::format("verify {} drafts, batch 1 (ctx {})", k, o.context),
                               *dt * 1e3, "vs decode", *dt / *plain);
      summary << fmt::format("verify{}={:.3f}x ", k, *dt / *plain);
    }
  }

  // Time to first token with a cached prefix (issue 17: a hit at most 15% of
  // a miss): through the engine (prefix cache on), a prompt of prefix_hit
  // tokens and 32 more, cold (its prefix never seen), then the same prefix
  // with 32 other tokens (its full pages cached by the first). Medians of 10.
  if (o.prefix_hit > 0) {
    engine::EngineConfig config;
    config.step_graphs = !o.enforce_eager;
    config.max_batched_tokens = std::max<int64_t>(2048, o.prefix_hit + 32);
    engine::Engine engine(m, kv, nullptr, config);
    auto ttft = [&](std::vector<int32_t> prompt, const std::string& id) -> Expected<double> {
      engine::Request r;
      r.id = id;
      r.prompt = std::move(prompt);
      r.max_new_tokens = 1;
      r.ignore_eos = true;
      b.synchronize();
      const auto t0 = Clock::now();
      if (Status s = engine.add_request(std::move(r)); !s.ok()) return s;
      double first = -1;
      while (engine.has_work())
        for (const engine::StepOutput& out : engine.step())
          if (!out.new_tokens.empty() && first < 0) first = since(t0);
      return first;
    };
    std::vector<double> miss, hit;
    for (int rep = 0; rep <= 10; ++rep) {
      std::vector<int32_t> prefix, a, bq;
      for (int64_t i = 0; i < o.prefix_hit; ++i)
        prefix.push_back(int32_t((i * 7919 + rep * 104729 + 11) % c.vocab_size));
      a = prefix;
      bq = prefix;
      for (int64_t i = 0; i < 32; ++i) {
        a.push_back(int32_t((i * 31 + rep + 1) % c.vocab_size));
        bq.push_back(int32_t((i * 37 + rep + 2) % c.vocab_size));
      }
      auto cold = ttft(a, fmt::format("cold{}", rep));
      if (!cold) return fail(cold.status());
      auto warm = ttft(bq, fmt::format("warm{}", rep));
      if (!warm) return fail(warm.status());
      if (rep == 0) continue;  // warm-up
      miss.push_back(*cold);
      hit.push_back(*warm);
    }
    const engine::EngineStats& st = engine.stats();
    std::cout << fmt::format("{:<44} {:>13.3f} ms\n",
                             fmt::format("TTFT, {} + 32 tokens, prefix miss", o.prefix_hit),
                             median(miss) * 1e3);
    std::cout << fmt::format("{:<44} {:>13.3f} ms {:>12} {:>7.3f}x\n",
                             fmt::format("TTFT, {} + 32 tokens, prefix hit", o.prefix_hit),
                             median(hit) * 1e3, "vs miss", median(hit) / median(miss));
    std::cout << fmt::format("prefix cache: {} of {} prompt tokens found cached\n",
                             st.prefix_cache_hits, st.prefix_cache_queries);
    summary << fmt::format("prefix_miss={:.2f}ms prefix_hit={:.2f}ms ", median(miss) * 1e3,
                           median(hit) * 1e3);
  }

  // Time to first token for one prompt.
  for (int64_t p : o.prompts) {
    auto dt = time_prefill(m, kv, p);
    if (!dt) return fail(dt.status());
    const int64_t w = c.sliding_window.value_or(p);
    double attn_pairs = 0;  // (query, key) pairs under the causal sliding-window mask
    for (int64_t i = 0; i < p; ++i) attn_pairs += double(std::min<int64_t>(i + 1, w));
    const double flops = 2.0 * n.layer_params * double(p) + 2.0 * n.lm_head_params +
                         double(c.num_hidden_layers) * 4.0 * double(c.q_size()) * attn_pairs;
    const double ideal = mm_rate > 0 ? flops / mm_rate : 0;
    row(fmt::format("time to first token, {}-token prompt", p), fmt::format("{:.2f} ms", *dt * 1e3),
        ideal, *dt, fmt::format("{:.2f} ms", ideal * 1e3));
    summary << fmt::format("ttft{}={:.2f}ms ", p, *dt * 1e3);
  }

  // Multi-LoRA at batch 64: none, one shared adapter, 64 distinct adapters.
  if (!o.skip_lora) {
    const int nslots = int(o.lora_batch);
    lora::AdapterSlots slots(built->backends, c, nslots);  // split as the model is
    attach_lora_columns(m, slots, o.lora_columns < 0 ? nslots * ((o.lora_rank + 7) / 8 * 8) : o.lora_columns);
    for (int s = 0; s < nslots; ++s)
      slots.assign_random(s, o.lora_rank, 1.0f, 1000 + 97 * uint64_t(s));
    b.synchronize();
    auto none =
        time_decode(m, kv, nullptr, o.lora_batch, o.lora_context, o.steps, {}, !o.enforce_eager);
    if (!none) return fail(none.status());
    auto shared =
        time_decode(m, kv, &slots, o.lora_batch, o.lora_context, o.steps, {0}, !o.enforce_eager);
    if (!shared) return fail(shared.status());
    std::vector<int32_t> distinct;
    for (int s = 0; s < nslots; ++s) distinct.push_back(s);
    auto many = time_decode(m, kv, &slots, o.lora_batch, o.lora_context, o.steps, distinct,
                            !o.enforce_eager);
    if (!many) return fail(many.status());
    const std::string label = fmt::format("batch {} ctx {} step", o.lora_batch, o.lora_context);
    std::cout << fmt::format("{:<44} {:>13.3f} ms\n", label + ", no adapter", *none * 1e3);
    std::cout << fmt::format("{:<44} {:>13.3f} ms {:>12} {:>7.3f}x\n",
                             label + fmt::format(", 1 shared r{}", o.lora_rank), *shared * 1e3,
                             "vs none", *shared / *none);
    std::cout << fmt::format("{:<44} {:>13.3f} ms {:>12} {:>7.3f}x\n",
                             label + fmt::format(", {} distinct r{}", nslots, o.lora_rank),
                             *many * 1e3, "vs none", *many / *none);
    summary << fmt::format("lora64_distinct={:.3f}x ", *many / *none);
  }

#ifdef PHILORA_HAVE_CUDA
  if (b.device() == Device::cuda) {
    int64_t free_b = 0, total_b = 0;
    if (cuda_memory_info(&free_b, &total_b).ok()) {
      const double used_other = double(total_b - free_b) -
                                double(kv.layers.size()) * 2.0 * double(kv.layers[0].k.nbytes());
      const double budget = o.mem_fraction * double(total_b) - used_other;
      const double tokens = budget / n.kv_bytes_per_token;
      std::cout << fmt::format(
          "{:<44} {:>16}\n", fmt::format("KV capacity at {:.0f}% of memory", o.mem_fraction * 100),
          fmt::format("{:.0f} tokens", tokens));
      summary << fmt::format("kv_capacity={:.0f}tok ", tokens);
    }
  }
#endif
  std::cout << "summary: " << b.name() << " " << summary.str() << "\n";
  return 0;
}

}  // namespace

Expected<BenchCheckpoint> open_bench_checkpoint(const std::string& model_dir, int64_t layers) {
  BenchCheckpoint m{phi3_mini(layers), {}};
  if (model_dir.empty()) return m;
  auto config = model::load_config(model_dir);
  if (!config) return config.status();
  m.config = *config;
  auto t = io::TensorSet::open_model_dir(model_dir);
  if (!t) return t.status();
  m.tensors = std::move(*t);
  return m;
}

Expected<model::Phi3Weights> bench_weights(const BenchCheckpoint& m, bool random, Backend& b,
                                           model::TpShard shard) {
  if (random) {
    PHILORA_RETURN_IF_ERROR(model::check_tensor_parallel(m.config, shard.world));
    return model::random_weights(m.config, b, 1234, 0.02f, shard);
  }
  return model::load_weights(m.tensors, m.config, b, {}, shard);
}

void add_bench_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<BenchOptions>();
  auto w = std::make_shared<WorkloadOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Phi-3-mini-shaped model with random weights: speed vs the device's ceilings");
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--tensor-parallel", o->tensor_parallel,
                  "split the model over N ranks (as score / generate / serve do) and also print "
                  "rank 0's time in collectives per decode step; on the cpu the ranks are "
                  "simulated threads of this process, one core each")
      ->check(CLI::Range(1, 64));
  add_simulate_ranks_option(*cmd, o->simulate_ranks);
  cmd->add_option("--model", o->model_dir,
                  "HF model directory to time instead of the random Phi-3-mini-shaped model");
  cmd->add_option("--layers", o->layers, "layers of the random model (32 for the real shape)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--prompt", o->prompts, "prompt lengths for time to first token")->delimiter(',');
  cmd->add_option("--batch", o->batches, "decode batch sizes")->delimiter(',');
  cmd->add_option("--context", o->context, "cached tokens per sequence for decode")
      ->check(CLI::Range(0, 131072));
  cmd->add_option("--steps", o->steps, "timed decode steps (median)")->check(CLI::Range(1, 1000));
  cmd->add_option("--lora-batch", o->lora_batch, "batch (and distinct adapters) of the LoRA figure")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--lora-context", o->lora_context,
                  "cached tokens per sequence of the LoRA figure");
  cmd->add_option("--lora-rank", o->lora_rank, "rank of the random adapters")
      ->check(CLI::Range(1, 128));
  cmd->add_flag("--skip-lora", o->skip_lora, "leave out the multi-LoRA figure");
  cmd->add_option_function<std::string>(
         "--speculate", [o](const std::string& spec) { o->speculate = parse_speculate(spec)->k; },
         "ngram[:K] or medusa[:K]: also time steps verifying 1 .. K drafted tokens at batch 1, as "
         "a ratio to a decode step (the same for both methods: drafts are k + 1 query rows)")
      ->check([](const std::string& spec) {
        const Expected<Speculation> k = parse_speculate(spec);
        return k.ok() ? std::string() : k.status().message();
      });
  cmd->add_flag("--sampling-overhead", o->sampling_overhead,
                "also time each decode batch with every row asking the top 20 logprobs and "
                "repetition, frequency and presence penalties, as a ratio to the plain step");
  cmd->add_option("--prefix-hit", o->prefix_hit,
                  "also time the first token of a prompt of N + 32 tokens whose first N are in "
                  "the prefix cache, against the same prompt cold (through the engine)")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 16));
  add_lora_columns_option(*cmd, o->lora_columns);
  cmd->add_flag("--enforce-eager", o->enforce_eager, "every step op by op (no CUDA graphs)");
  cmd->add_option("--mem-fraction", o->mem_fraction,
                  "device memory fraction for the KV capacity figure")
      ->check(CLI::Range(0.1, 1.0));
  // --workload: a serving workload through the engine instead of the figures above.
  cmd->add_option("--workload", w->workload,
                  "poisson: a replayable serving workload through the engine (Poisson arrivals, "
                  "synthetic adapters; the options below) instead of the step figures")
      ->check(CLI::IsMember({"poisson"}));
  CLI::Option* rate = cmd->add_option("--rate", w->rate, "workload: requests per second")
                          ->check(CLI::Range(1e-3, 1e6));
  cmd->add_option("--running", w->running,
                  "workload: instead of --rate, the rate that keeps about N sequences running "
                  "(calibrated first: N requests of the mean lengths together; printed)")
      ->check(CLI::Range(int64_t(1), int64_t(4096)))
      ->excludes(rate);
  cmd->add_option("--duration", w->duration, "workload: seconds during which requests arrive")
      ->check(CLI::Range(1e-3, 86400.0));
  cmd->add_option("--seed", w->seed, "workload: seed of every random choice");
  cmd->add_option("--adapters", w->adapters,
                  "workload: synthetic adapters made in memory (0: base model only)")
      ->check(CLI::Range(int64_t(0), int64_t(100000)));
  cmd->add_option("--zipf-alpha", w->zipf_alpha, "workload: adapter k drawn with P ~ 1/k^alpha")
      ->check(CLI::Range(0.0, 10.0));
  cmd->add_option("--prompt-len", w->prompt_len, "workload: mean prompt tokens")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--prompt-spread", w->prompt_spread,
                  "workload: prompt tokens uniform in mean +- this")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--output-len", w->output_len, "workload: mean output tokens")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--output-spread", w->output_spread,
                  "workload: output tokens uniform in mean +- this")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--max-loras", w->max_loras, "workload: adapters resident on the device")
      ->check(CLI::Range(int64_t(1), int64_t(1024)));
  cmd->add_option("--max-running", w->max_running, "workload: sequences in flight at most")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
  cmd->add_option("--max-batched-tokens", w->max_batched_tokens, "workload: token budget of a step")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--kv-tokens", w->kv_tokens, "workload: tokens of the KV cache")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 30));
  cmd->callback([o, w, &rc] {
    if (w->workload.empty()) {
      rc = run_bench(*o);
      return;
    }
    if (o->tensor_parallel > 1) {
      rc = fail(Status::errorf(
          "bench --workload with --tensor-parallel {}: not built (the workload bench runs one "
          "rank; the step figures take --tensor-parallel)",
          o->tensor_parallel));
      return;
    }
    w->device = o->device;
    w->model_dir = o->model_dir;
    w->layers = o->layers;
    w->lora_rank = o->lora_rank;
    w->lora_columns = o->lora_columns;
    w->enforce_eager = o->enforce_eager;
    rc = run_workload(*w);
  });
}

}  // namespace philora::app
