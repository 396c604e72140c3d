// Kernel lab: times every CUDA op at Phi-3-mini shapes (prefill of 2048 tokens,
// decode at batch 1 and 64) with CUDA events, median of 20 runs after warm-up,
// and prints achieved bandwidth / FLOP rate next to each. Not a test: numbers
// for the napkin math in dev/cuda/NOTES.md. Built by tests/gpu/prepare.sh,
// run by tests/gpu/run.sh (or: .carry/bin/op_bench).
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_skinny.cuh"

using namespace philora;

namespace {

constexpr int64_t kHidden = 3072, kInter = 8192, kHeads = 32, kHeadDim = 96, kVocab = 32064;
constexpr int64_t kQkv = 3 * kHidden;

CudaBackend* g_backend = nullptr;

double time_us(const std::function<void()>& f, int reps = 20) {
  cudaStream_t s = g_backend->context().stream;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, s);
    f();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(double(ms) * 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void row(const std::string& what, double us, double bytes, double flops) {
  std::printf("%-58s %9.1f us %8.0f GB/s %7.1f TFLOP/s\n", what.c_str(), us, bytes / us * 1e-3,
              flops / us * 1e-6);
}

Tensor rnd(std::initializer_list<int64_t> shape, uint64_t seed, float hw = 0.5f) {
  return g_backend->random_uniform(shape, seed, 0.0f, hw);
}

struct Paged {
  TokenPlan tokens;
  AttentionPlan plan;
  KvLayer kv;
};

// Attention heads: Phi-3-mini's unless said (Phi-3-medium and Phi-4: 40 x 10 of 128).
struct Heads {
  int64_t n = kHeads, kv = kHeads, dim = kHeadDim;
};

// `batch` sequences with `cached` tokens in the cache and `q` new ones each.
Paged make_paged(int64_t batch, int64_t cached, int64_t q, int64_t window, Heads hd = {}) {
  Backend& b = *g_backend;
  const int64_t page = 16, len = cached + q, pages_per = (len + page - 1) / page;
  Paged p;
  std::vector<int32_t> ids, pos, kv_locs, lr, q_indptr{0}, kv_indptr{0}, kv_indices, last;
  for (int64_t s = 0; s < batch; ++s) {
    for (int64_t j = cached; j < len; ++j) {
      ids.push_back(int32_t((s * 7 + j) % kVocab));
      pos.push_back(int32_t(j));
      kv_locs.push_back(int32_t((s * pages_per + j / page) * page + j % page));
      lr.push_back(0);
    }
    for (int64_t i = 0; i < pages_per; ++i) kv_indices.push_back(int32_t(s * pages_per + i));
    q_indptr.push_back(int32_t(pos.size()));
    kv_indptr.push_back(int32_t(kv_indices.size()));
    last.push_back(int32_t(len - (pages_per - 1) * page));
  }
  p.tokens = {b.upload_i32(ids), b.upload_i32(pos), b.upload_i32(kv_locs), b.upload_i32(lr)};
  p.plan.q_indptr = b.upload_i32(q_indptr);
  p.plan.kv_indptr = b.upload_i32(kv_indptr);
  p.plan.kv_indices = b.upload_i32(kv_indices);
  p.plan.kv_last_page_len = b.upload_i32(last);
  p.plan.positions = p.tokens.positions;
  p.plan.num_seqs = batch;
  p.plan.max_q_len = q;
  p.plan.max_kv_len = len;
  p.plan.window = window;
  p.plan.scale = float(1.0 / std::sqrt(double(hd.dim)));
  const int64_t pages = batch * pages_per;
  p.kv = {rnd({pages, hd.kv, page, hd.dim}, 11), rnd({pages, hd.kv, page, hd.dim}, 12)};
  return p;
}

RopeParams rope_params(Heads hd = {}) {
  RopeParams r;
  std::vector<float> inv(size_t(hd.dim / 2));
  for (int64_t i = 0; i < hd.dim / 2; ++i) inv[size_t(i)] = 1.0f / std::pow(10000.0f, float(2 * i) / float(hd.dim));
  r.inv_freq_short = g_backend->upload_f32(inv);
  r.inv_freq_long = r.inv_freq_short;
  r.rotary_dim = hd.dim;
  r.n_heads = hd.n;
  r.n_kv_heads = hd.kv;
  r.head_dim = hd.dim;
  return r;
}

void bench_dense(int64_t T, const std::string& tag) {
  Tensor x = rnd({T, kHidden}, 1), r = rnd({T, kHidden}, 2), w = rnd({kHidden}, 3);
  row(tag + " add_rms_norm", time_us([&] { g_backend->add_rms_norm(x, r, w, 1e-5f); }),
      double(T) * kHidden * 2 * 4, 0);
  struct Mm {
    const char* name;
    int64_t in, out;
  };
  for (const Mm& m : {Mm{"qkv", kHidden, kQkv}, Mm{"o", kHidden, kHidden}, Mm{"gate_up", kHidden, 2 * kInter},
                      Mm{"down", kInter, kHidden}, Mm{"lm_head", kHidden, kVocab}}) {
    if (T > 64 && std::string(m.name) == "lm_head") continue;
    Tensor a = rnd({T, m.in}, 4), wt = rnd({m.out, m.in}, 5, 0.02f);
    const double us = time_us([&] { g_backend->matmul(a, wt); });
    row(tag + " matmul " + m.name + " " + std::to_string(m.in) + "->" + std::to_string(m.out), us,
        2.0 * double(m.in * m.out + T * (m.in + m.out)), 2.0 * double(T * m.in * m.out));
  }
  Tensor gu = rnd({T, 2 * kInter}, 6);
  row(tag + " silu_mul", time_us([&] { g_backend->silu_mul(gu); }), double(T) * kInter * 2 * 3, 0);
}

void bench_attention(int64_t batch, int64_t cached, int64_t q, const std::string& tag, int64_t window = 2047,
                     Heads hd = {}) {
  Paged p = make_paged(batch, cached, q, window, hd);
  RopeParams rope = rope_params(hd);
  const int64_t T = batch * q, width = (hd.n + 2 * hd.kv) * hd.dim;
  Tensor qkv = rnd({T, width}, 7);
  row(tag + " rope_and_cache", time_us([&] { g_backend->rope_and_cache(qkv, p.tokens, rope, p.kv); }),
      double(T) * double(width) * 2 * 2, 0);
  const double kv_bytes = double(batch) * double(cached + q) * double(hd.kv * hd.dim) * 2 * 2;
  // causal FLOPs: 4 · d per (query, key) pair, keys ≤ position (and inside the window)
  double pairs = 0;
  for (int64_t i = 0; i < q; ++i)
    pairs += double(window > 0 ? std::min<int64_t>(cached + i + 1, window) : cached + i + 1);
  const double flops = 4.0 * double(hd.dim * hd.n) * pairs * double(batch);
  row(tag + " attention", time_us([&] { g_backend->attention(qkv, p.kv, p.plan, rope); }),
      kv_bytes + double(T) * double(hd.n * hd.dim) * 4, flops);
}

// LoRA on one module at rank 16: every token shares slot 0, or each has its own.
void bench_lora(int64_t T, int64_t in, int64_t out, bool distinct, const std::string& tag) {
  Backend& b = *g_backend;
  const int64_t rank = 16, slots = 64;
  std::vector<Tensor> keep;
  std::vector<int64_t> ap, bp;
  std::vector<int32_t> ranks;
  std::vector<float> scales;
  for (int64_t s = 0; s < slots; ++s) {
    keep.push_back(rnd({rank, in}, 100 + uint64_t(s), 0.02f));
    ap.push_back(int64_t(reinterpret_cast<uintptr_t>(keep.back().data)));
    keep.push_back(rnd({out, rank}, 200 + uint64_t(s), 0.02f));
    bp.push_back(int64_t(reinterpret_cast<uintptr_t>(keep.back().data)));
    ranks.push_back(int32_t(rank));
    scales.push_back(2.0f);
  }
  LoraModuleTable m;
  m.a_ptrs = b.upload_i64(ap);
  m.b_ptrs = b.upload_i64(bp);
  m.ranks = b.upload_i32(ranks);
  m.scales = b.upload_f32(scales);
  m.dtype = DType::bf16;
  m.num_slots = slots;
  m.in_features = in;
  m.out_features = out;
  m.max_rank = rank;
  std::vector<int32_t> token_slot, indptr{0}, seg_slot;
  for (int64_t t = 0; t < T; ++t) token_slot.push_back(distinct ? int32_t(t % slots) : 0);
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0 && token_slot[size_t(t)] != token_slot[size_t(t - 1)]) indptr.push_back(int32_t(t));
    if (t == 0 || token_slot[size_t(t)] != token_slot[size_t(t - 1)]) seg_slot.push_back(token_slot[size_t(t)]);
  }
  indptr.push_back(int32_t(T));
  LoraBatch batch;
  batch.active = true;
  batch.seg_indptr = b.upload_i32(indptr);
  batch.seg_slot = b.upload_i32(seg_slot);
  batch.token_slot = b.upload_i32(token_slot);
  batch.num_segments = int64_t(seg_slot.size());
  batch.max_rank = rank;
  Tensor x = rnd({T, in}, 8), y = rnd({T, out}, 9);
  const int64_t adapters = distinct ? std::min(T, slots) : 1;
  const std::string name = tag + (distinct ? " distinct" : " shared") + " r16 " + std::to_string(in) + "->" +
                           std::to_string(out);
  Tensor xa = b.lora_shrink(x, m, batch);
  row(name + " shrink", time_us([&] { b.lora_shrink(x, m, batch); }),
      double(adapters) * rank * in * 2 + double(T) * in * 2, 2.0 * double(T) * rank * in);
  row(name + " expand", time_us([&] { b.lora_expand(xa, m, batch, y, 0); }),
      double(adapters) * rank * out * 2 + double(T) * out * 4, 2.0 * double(T) * rank * out);
  // The same in a graph of 10 back-to-back launches (as a decode step runs
  // them: programmatic dependent launch, no host in between), per launch.
  auto graphed = [&](const std::function<void()>& op) {
    std::unique_ptr<StepGraph> g = b.capture([&] {
      for (int i = 0; i < 10; ++i) op();
    });
    return g ? time_us([&] { g->replay(); }) / 10.0 : -1.0;
  };
  row(name + " shrink (graph)", graphed([&] { b.lora_shrink(x, m, batch); }),
      double(adapters) * rank * in * 2 + double(T) * in * 2, 2.0 * double(T) * rank * in);
  row(name + " delta (graph)", graphed([&] { b.lora_delta(xa, m, batch); }),
      double(adapters) * rank * out * 2 + double(T) * out * 2, 2.0 * double(T) * rank * out);
  row(name + " shrink+delta (graph)", graphed([&] { b.lora_delta(b.lora_shrink(x, m, batch), m, batch); }),
      double(adapters) * rank * (in + out) * 2 + double(T) * (in + out) * 2, 2.0 * double(T) * rank * (in + out));
}

// Decode-sized matmuls (issue 19): cuBLASLt's timed best against our skinny
// kernel with 1, 2, … blocks an SM (stream-K grids), on enough copies of the weight (≥ 150 MB, taken
// in turn) that w comes from memory, 30 launches back to back between two
// events: µs per launch (ours overlaps each launch's start with the one before,
// as in a step; cuBLASLt's launches do not). GB/s counts w's bytes only.
void bench_skinny(int64_t T) {
  cuda::LtMatmul& mm = *g_backend->context().matmul;
  struct Mm {
    const char* name;
    int64_t in, out;
  };
  for (const Mm& s : {Mm{"qkv", kHidden, kQkv}, Mm{"o", kHidden, kHidden}, Mm{"gate_up", kHidden, 2 * kInter},
                      Mm{"down", kInter, kHidden}, Mm{"lm_head", kHidden, kVocab}}) {
    const double wbytes = 2.0 * double(s.in * s.out);
    const int copies = std::max(2, int(std::ceil(150e6 / wbytes)));
    std::vector<Tensor> ws;
    for (int i = 0; i < copies; ++i) ws.push_back(rnd({s.out, s.in}, uint64_t(100 + i), 0.02f));
    Tensor x = rnd({T, s.in}, 7);
    Tensor y = g_backend->alloc(DType::bf16, {T, s.out});
    auto per_launch = [&](const std::function<void(const Tensor&)>& f) {
      int i = 0;
      return time_us([&] {
               for (int r = 0; r < 30; ++r) f(ws[size_t(i++ % copies)]);
             }, 7) / 30.0;
    };
    mm.set_skinny(cuda::LtMatmul::Skinny::never);
    const double lt = per_launch([&](const Tensor& w) { mm.run(x.data, w.data, y.data, T, s.out, s.in); });
    std::string line = fmt::format("skinny m={:<2} {:<8} {:>5}->{:<5} cuBLASLt {:6.1f} us {:5.0f} GB/s | ours", T,
                                   s.name, s.in, s.out, lt, wbytes / lt * 1e-3);
    double best = 1e30;
    int best_per_sm = 0;
    for (int per_sm = 1; per_sm <= cuda::skinny_gemm_max_per_sm(T, s.in); ++per_sm) {
      const double us = per_launch([&](const Tensor& w) {
        mm.run_skinny(x.data, w.data, y.data, T, s.out, s.in, false, s.in, per_sm);
      });
      line += fmt::format(" {}/SM {:.1f}", per_sm, us);
      if (us < best) best = us, best_per_sm = per_sm;
    }
    std::printf("%s | best %d/SM %.1f us %.0f GB/s (%.2fx cuBLASLt)\n", line.c_str(), best_per_sm, best,
                wbytes / best * 1e-3, lt / best);
    mm.set_skinny(cuda::LtMatmul::Skinny::timed);  // the default
  }
}

void bench_host_overhead() {
  Tensor x = rnd({1, kHidden}, 1), w = rnd({kHidden}, 3), wt = rnd({kHidden, kHidden}, 5, 0.02f);
  g_backend->synchronize();
  for (auto [name, f] : std::vector<std::pair<std::string, std::function<void()>>>{
           {"rms_norm (1, 3072)", [&] { g_backend->rms_norm(x, w, 1e-5f); }},
           {"matmul (1, 3072) x (3072, 3072)", [&] { g_backend->matmul(x, wt); }},
           {"upload_i32 of 64 values", [&] { g_backend->upload_i32(std::vector<int32_t>(64, 1)); }}}) {
    const int n = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
    g_backend->synchronize();
    const auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    g_backend->synchronize();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() / n;
    std::printf("host: %-40s %6.2f us per call on the host, %6.2f us per call queued back to back\n",
                name.c_str(), host * 1e6, wall * 1e6);
  }
}

}  // namespace

// op_bench [TEXT]: only the benchmarks whose label contains TEXT (for profiling one).
std::string g_only;
bool want(const std::string& tag) { return g_only.empty() || tag.find(g_only) != std::string::npos; }

int main(int argc, char** argv) {
  if (argc > 1) g_only = argv[1];
  auto made = make_cuda_backend();
  if (!made) {
    std::fprintf(stderr, "op_bench: %s\n", made.status().message().c_str());
    return 1;
  }
  g_backend = static_cast<CudaBackend*>(made->get());
  std::printf("device: %s\n", g_backend->context().props.name);
  try {
    if (g_only.empty()) bench_host_overhead();
    if (want("prefill T=2048")) bench_dense(2048, "prefill T=2048");
    if (want("prefill T=2048 attention")) bench_attention(1, 0, 2048, "prefill T=2048");
    if (want("prefill T=512 attention")) bench_attention(1, 0, 512, "prefill T=512");
    if (want("prefill T=2048 d=128")) bench_attention(1, 0, 2048, "prefill T=2048 d=128 40x10 heads", 0, {40, 10, 128});
    for (int64_t T : {1, 2, 3, 4, 5, 6, 7, 8, 32, 64})
      if (want("skinny m=" + std::to_string(T) + " ")) bench_skinny(T);
    if (want("decode B=1")) bench_dense(1, "decode B=1");
    if (want("decode B=1 ctx 512")) bench_attention(1, 511, 1, "decode B=1 ctx 512");
    if (want("decode B=8 ctx 512")) bench_attention(8, 511, 1, "decode B=8 ctx 512");
    if (want("decode B=32 ctx 512")) bench_attention(32, 511, 1, "decode B=32 ctx 512");
    if (want("decode B=64")) bench_dense(64, "decode B=64");
    if (want("decode B=64 ctx 1024")) bench_attention(64, 1023, 1, "decode B=64 ctx 1024");
    for (bool distinct : {false, true}) {
      if (!want(distinct ? "lora B=64 distinct" : "lora B=64 shared")) continue;
      bench_lora(64, kHidden, kQkv, distinct, "lora B=64");
      bench_lora(64, kInter, kHidden, distinct, "lora B=64");
    }
    if (want("lora B=1")) bench_lora(1, kHidden, kQkv, false, "lora B=1");
    if (want("lora T=2048")) bench_lora(2048, kHidden, kQkv, false, "lora T=2048");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "op_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
