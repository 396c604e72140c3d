// philora bench --workload poisson: a replayable serving workload through the real engine
// (continuous batching, paged KV cache, adapter store with device slots), on the main thread,
// with no HTTP in between.
//
// Everything is drawn from --seed: arrival times (Poisson: exponential gaps at --rate requests/s
// for --duration seconds; with --running N, at the rate that keeps about N sequences running,
// calibrated first: N / the time N requests of the mean lengths take together), prompt and output lengths (each uniform over [len - spread, len +
// spread], at least 1, prompt + output within the model's context), prompt tokens (uniform over
// the vocabulary; the same plan whatever --adapters), and each request's adapter: one of --adapters synthetic rank --lora-rank
// adapters drawn from a Zipf distribution (P(k) ∝ 1 / k^alpha, k = 1..N), or the base model
// with --adapters 0. The adapters are made in memory (AdapterStore::register_adapter): random
// A and B on every layer's four target modules, shared among at most four distinct random sets
// (1,000 distinct Phi-3-mini adapters would take 100 GB of host memory in f32), each adapter with
// its own identity; going to a device slot copies its full bytes, as a real one does. Requests
// are greedy and ignore eos, so each generates exactly its output length.
//
// The loop: add every request whose arrival time has come, run one engine step, note when each
// request's tokens came out. Reported: throughput (output tokens, and prompt + output tokens,
// per second of the run), time to first token (from the request's arrival time) and
// inter-token latency (between a request's successive tokens), p50 and p99, the time-weighted
// mean of running sequences, and the adapter store's uploads to device slots, evictions and
// the mean time of one upload (the host -> device swap).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "bench_workload.h"
#include "common.h"
#include "core/hash.h"
#include "engine/engine.h"
#include "kv/kv_cache.h"
#include "lora/adapter.h"
#include "lora/slots.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/phi3.h"
#include "model/weights.h"

namespace philora::app {

namespace {

using Clock = std::chrono::steady_clock;

struct Planned {
  double arrival = 0;  // seconds from the start
  engine::Request request;
};

// Random A and B (uniform in ±0.02) for every layer's four target modules.
lora::Adapter random_adapter(const model::Phi3Config& c, int64_t rank, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-0.02f, 0.02f);
  const auto host = [&](int64_t rows, int64_t cols) {
    const size_t n = size_t(rows * cols);
    std::shared_ptr<float[]> buf = std::make_shared<float[]>(n);
    for (size_t i = 0; i < n; ++i) buf[i] = u(rng);
    Tensor t(buf.get(), DType::f32, {rows, cols});
    t.storage = buf;
    return t;
  };
  lora::Adapter a;
  a.layers.resize(size_t(c.num_hidden_layers));
  for (auto& layer : a.layers)
    for (int t = 0; t < lora::kLayerTargets; ++t) {
      const lora::ModuleDims d = lora::module_dims(c, lora::Target(t));
      lora::LoraModule m;
      m.a = host(rank, d.in);
      m.b = host(d.out, rank);
      m.rank = rank;
      m.scale = 1.0f;
      layer[size_t(t)] = std::move(m);
    }
  a.max_rank = rank;
  return a;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[size_t(std::floor(p * double(v.size() - 1)))];
}

}  // namespace

int run_workload(const WorkloadOptions& o) {
  if (o.workload != "poisson")
    return fail(Status::errorf("--workload {:?}: the one workload is 'poisson'", o.workload));
  auto backend = make_backend(o.device);
  if (!backend) return fail(backend.status());
  Backend& b = **backend;

  // The model: --model's checkpoint, or the Phi-3-mini shape with random weights.
  auto checkpoint = open_bench_checkpoint(o.model_dir, o.layers);
  if (!checkpoint) return fail(checkpoint.status());
  const model::Phi3Config& c = checkpoint->config;
  const auto t_build = Clock::now();
  auto weights = bench_weights(*checkpoint, o.model_dir.empty(), b);
  if (!weights) return fail(weights.status());
  model::Phi3ForCausalLM m(c, std::move(*weights), b);
  lora::AdapterSlots slots(b, c, int(std::max<int64_t>(1, o.max_loras)));
  if (o.adapters > 0) attach_lora_columns(m, slots, o.lora_columns);
  lora::AdapterStore store(c, slots, lora::StoreOptions{});

  // Three streams from the seed: the plan's arrivals, lengths and tokens (the same whatever the
  // adapters), each request's adapter, the adapters' weights.
  std::mt19937_64 rng(o.seed), choice_rng(o.seed + 1), weights_rng(o.seed + 2);
  std::vector<std::shared_ptr<const lora::Adapter>> sets;
  {
    for (int64_t i = 0; i < std::min<int64_t>(o.adapters, 4); ++i) {
      // Packed as the store packs what it loads from disk (page-locked on CUDA).
      auto packed = lora::pack(
          lora::with_host_dtype(random_adapter(c, o.lora_rank, weights_rng), store.host_dtype()),
          [&b](DType d, int64_t n) { return b.pinned_host(d, n); });
      if (!packed) return fail(packed.status());
      sets.push_back(std::make_shared<const lora::Adapter>(std::move(*packed)));  // shared, not copied
    }
    for (int64_t i = 0; i < o.adapters; ++i) {
      const std::string name = fmt::format("synthetic-{}", i);
      auto a = std::make_shared<lora::Adapter>(*sets[size_t(i) % sets.size()]);
      a->name = name;
      a->content_hash = hash_combine(hash_string(o.seed, name), uint64_t(i));
      if (Status s = store.register_adapter(name, std::move(a)); !s.ok()) return fail(s);
    }
  }
  const int64_t page = 16;
  kv::KvCache kv(b, c.num_hidden_layers, o.kv_tokens / page + 1, page, c.num_key_value_heads,
                 c.head_dim);
  engine::EngineConfig config;
  config.max_batched_tokens = o.max_batched_tokens;
  config.max_running = o.max_running;
  config.step_graphs = !o.enforce_eager;
  engine::Engine engine(m, kv, &store, config);
  b.synchronize();
  const double build_s = std::chrono::duration<double>(Clock::now() - t_build).count();

  // --running N: by Little's law, N sequences stay running when requests arrive at N / the time
  // one takes. That time is measured once, for N requests of the mean lengths on the base model
  // started together (so it includes the wait of a full batch, not an adapter's).
  double rate = o.rate;
  double calibration_s = 0;
  if (o.running > 0) {
    const int64_t prompt = std::min<int64_t>(o.prompt_len, engine.max_sequence_tokens() - 1);
    for (int64_t i = 0; i < o.running; ++i) {
      engine::Request r;
      r.id = fmt::format("calibrate{}", i);
      for (int64_t t = 0; t < prompt; ++t) r.prompt.push_back(int32_t((i * 7919 + t) % c.vocab_size));
      r.max_new_tokens = std::min(o.output_len, engine.max_sequence_tokens() - prompt);
      r.ignore_eos = true;
      if (Status s = engine.add_request(std::move(r)); !s.ok()) return fail(s);
    }
    const Clock::time_point t0 = Clock::now();
    while (engine.has_work()) (void)engine.step();
    calibration_s = std::chrono::duration<double>(Clock::now() - t0).count();
    rate = double(o.running) / calibration_s;
  }

  // The requests, all from the seed.
  std::vector<double> zipf_cdf;  // [adapters]
  for (int64_t k = 1; k <= o.adapters; ++k)
    zipf_cdf.push_back((zipf_cdf.empty() ? 0.0 : zipf_cdf.back()) +
                       1.0 / std::pow(double(k), o.zipf_alpha));
  std::exponential_distribution<double> gap(rate);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const auto uniform_len = [&](int64_t len, int64_t spread) {
    return std::max<int64_t>(1, std::uniform_int_distribution<int64_t>(len - spread,
                                                                       len + spread)(rng));
  };
  const int64_t context = engine.max_sequence_tokens();
  std::vector<Planned> plan;
  for (double t = gap(rng); t < o.duration; t += gap(rng)) {
    Planned p;
    p.arrival = t;
    engine::Request& r = p.request;
    r.id = fmt::format("w{}", plan.size());
    const int64_t prompt = std::min(uniform_len(o.prompt_len, o.prompt_spread), context - 1);
    r.max_new_tokens = std::min(uniform_len(o.output_len, o.output_spread), context - prompt);
    r.ignore_eos = true;
    std::uniform_int_distribution<int32_t> token(0, int32_t(c.vocab_size) - 1);
    for (int64_t i = 0; i < prompt; ++i) r.prompt.push_back(token(rng));
    if (o.adapters > 0) {
      const double x = unit(choice_rng) * zipf_cdf.back();
      const size_t k = size_t(std::lower_bound(zipf_cdf.begin(), zipf_cdf.end(), x) - zipf_cdf.begin());
      r.adapter = fmt::format("synthetic-{}", std::min(k, zipf_cdf.size() - 1));
    }
    plan.push_back(std::move(p));
  }

  // The run.
  struct Record {
    Clock::time_point arrival, last;
    bool first = true;
    bool done = false;
  };
  std::map<std::string, Record> records;
  std::vector<double> ttft, itl;
  int64_t prompt_tokens = 0, output_tokens = 0, finished = 0, errors = 0;
  std::string first_error;
  double running_time = 0;  // sum of running sequences x step time
  const Clock::time_point start = Clock::now();
  size_t next = 0;
  while (next < plan.size() || engine.has_work()) {
    const Clock::time_point now = Clock::now();
    for (; next < plan.size() &&
           start + std::chrono::duration<double>(plan[next].arrival) <= now;
         ++next) {
      const auto arrival = start + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(plan[next].arrival));
      records[plan[next].request.id] = Record{arrival, arrival};
      prompt_tokens += int64_t(plan[next].request.prompt.size());
      if (Status s = engine.add_request(plan[next].request); !s.ok()) return fail(s);
    }
    if (!engine.has_work()) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(plan[next].arrival)));
      continue;
    }
    const int64_t running = engine.num_running();
    const std::vector<engine::StepOutput> outs = engine.step();
    const Clock::time_point after = Clock::now();
    running_time += double(running) * std::chrono::duration<double>(after - now).count();
    for (const engine::StepOutput& out : outs) {
      Record& rec = records[out.id];
      const size_t k = out.new_tokens.size();
      if (k > 0) {
        const double dt = std::chrono::duration<double>(after - rec.last).count();
        if (rec.first) {
          ttft.push_back(std::chrono::duration<double>(after - rec.arrival).count());
          for (size_t i = 1; i < k; ++i) itl.push_back(0);
        } else {
          for (size_t i = 0; i < k; ++i) itl.push_back(dt / double(k));
        }
        rec.first = false;
        rec.last = after;
        output_tokens += int64_t(k);
      }
      if (engine::is_error(out.finish)) {
        ++errors;
        if (first_error.empty()) first_error = out.error_detail;
      }
      if (out.request_finished() && !rec.done) {
        rec.done = true;
        ++finished;
      }
    }
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();

  const int64_t uploads = store.uploads_to_device();
  const double swap_ms = uploads > 0 ? store.upload_seconds() / double(uploads) * 1e3 : 0;
  // The swap on its own, after the run: an adapter into slot 0 until the
  // device has it (the copies and the table), and the host's share of that
  // (what the engine thread waits for); the median of 10 after one warm-up.
  std::vector<double> swap_device, swap_host;
  for (size_t i = 0; i < 11 && !sets.empty(); ++i) {
    b.synchronize();
    const auto t0 = Clock::now();
    slots.assign(0, *sets[i % sets.size()]);
    const double host = std::chrono::duration<double>(Clock::now() - t0).count();
    b.synchronize();
    if (i == 0) continue;
    swap_device.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    swap_host.push_back(host);
  }
  const double swap_device_ms = swap_device.empty() ? 0 : percentile(swap_device, 0.5) * 1e3;
  const double swap_host_ms = swap_host.empty() ? 0 : percentile(swap_host, 0.5) * 1e3;
  std::cout << fmt::format(
      "model: {} ({} layers, hidden {}), {} weights on {}, ready in {:.1f} s\n",
      o.model_dir.empty() ? "Phi-3-mini shape, random" : o.model_dir, c.num_hidden_layers,
      c.hidden_size, dtype_name(b.compute_dtype()), b.description(), build_s);
  if (o.running > 0)
    std::cout << fmt::format(
        "rate: {:.4g} requests/s for about {} running ({} requests of the mean lengths together "
        "took {:.2f} s); --rate {:.4g} replays this run\n",
        rate, o.running, o.running, calibration_s, rate);
  std::cout << fmt::format(
      "workload: poisson, {:.4g} requests/s for {:g} s, seed {}: {} requests; prompts uniform in "
      "[{}, {}], outputs uniform in [{}, {}] tokens; {} adapters of rank {} (Zipf alpha {:g}), {} "
      "device slots; KV cache {} tokens, max {} running, {} tokens a step\n",
      rate, o.duration, o.seed, plan.size(), std::max<int64_t>(1, o.prompt_len - o.prompt_spread),
      o.prompt_len + o.prompt_spread, std::max<int64_t>(1, o.output_len - o.output_spread),
      o.output_len + o.output_spread, o.adapters, o.lora_rank, o.zipf_alpha, o.max_loras,
      o.kv_tokens, o.max_running, o.max_batched_tokens);
  const auto row = [](const std::string& what, const std::string& value) {
    std::cout << fmt::format("{:<44} {:>24}\n", what, value);
  };
  row("figure", "value");
  row("requests finished", fmt::format("{} / {}", finished, plan.size()));
  row("errors", fmt::format("{}", errors));
  row("wall time", fmt::format("{:.2f} s", wall));
  row("throughput, output tokens", fmt::format("{:.1f} tok/s", double(output_tokens) / wall));
  row("throughput, prompt + output tokens",
      fmt::format("{:.1f} tok/s", double(prompt_tokens + output_tokens) / wall));
  row("mean running sequences", fmt::format("{:.1f}", running_time / wall));
  row("time to first token p50 / p99",
      fmt::format("{:.1f} / {:.1f} ms", percentile(ttft, 0.5) * 1e3, percentile(ttft, 0.99) * 1e3));
  row("inter-token latency p50 / p99",
      fmt::format("{:.2f} / {:.2f} ms", percentile(itl, 0.5) * 1e3, percentile(itl, 0.99) * 1e3));
  row("adapter uploads to device / evictions",
      fmt::format("{} / {}", uploads, store.device_evictions()));
  row("adapter swap (host -> device upload)", fmt::format("{:.3f} ms", swap_ms));
  row("adapter swap alone, to the device / host",
      fmt::format("{:.3f} / {:.3f} ms", swap_device_ms, swap_host_ms));
  if (!first_error.empty()) std::cout << "first error: " << first_error << "\n";
  std::cout << fmt::format(
      "summary: {} workload=poisson rate={:.4g} duration={:g} adapters={} requests={} finished={} "
      "errors={} output_tok_s={:.1f} total_tok_s={:.1f} mean_running={:.1f} ttft_p50_ms={:.1f} "
      "ttft_p99_ms={:.1f} itl_p50_ms={:.2f} itl_p99_ms={:.2f} adapter_uploads={} "
      "adapter_evictions={} swap_ms={:.3f} swap_device_ms={:.3f} swap_host_ms={:.3f}\n",
      b.name(), rate, o.duration, o.adapters, plan.size(), finished, errors,
      double(output_tokens) / wall, double(prompt_tokens + output_tokens) / wall,
      running_time / wall, percentile(ttft, 0.5) * 1e3, percentile(ttft, 0.99) * 1e3,
      percentile(itl, 0.5) * 1e3, percentile(itl, 0.99) * 1e3, uploads, store.device_evictions(),
      swap_ms, swap_device_ms, swap_host_ms);
  return errors == 0 && finished == int64_t(plan.size()) ? 0 : 1;
}

}  // namespace philora::app
