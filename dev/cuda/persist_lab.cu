// Kernel lab (issue 19): the GEMV chain (src/backend/cuda/cuda_chain*.cuh) —
// a decode layer's o, gate_up, down and the next layer's qkv at m = 1 in one
// persistent launch — against the library's GEMV launches, in CUDA graphs, on
// 32 layers of Phi-3-mini's weights (distinct random weights a layer, 7.25 GB a
// pass). Attention is not in the lab: o's input is the first hidden-size values
// of qkv's output (the same dependency: o waits for all of qkv). The variants
// are the library's kernel template at other shapes (warps a block, ring depth,
// TMA bulk copies or cp.async), so the lab times the code that ships.
//
// Every version's final residual and last qkv output must be the same bits as
// the GEMV launches'; the lab checks that before it times anything.
//
// Build here after tests/gpu/prepare.sh: dev/cuda/persist_lab.sh (→ .carry/persist_lab).
// Run on the GPU machine:  persist_lab [layers=32] [reps=20]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_chain.cuh"
#include "backend/cuda/cuda_chain_kernel.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_skinny.cuh"

using philora::cuda::bf16;
using philora::cuda::RowPrologue;

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

namespace {

constexpr int kHidden = 3072, kQkv = 9216, kInter = 8192;
constexpr float kEps = 1e-5f;
using philora::cuda::ChainArgs;
using philora::cuda::ChainStage;

// ---- set-up ------------------------------------------------------------------

__global__ void fill_kernel(bf16* p, int64_t n, uint64_t seed, float scale, float offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = (uint64_t(i) + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 29;
    const float u = float(z >> 40) / float(1 << 24) * 2.0f - 1.0f;  // [-1, 1)
    p[i] = __float2bfloat16(offset + scale * u);
  }
}

bf16* alloc_fill(int64_t n, uint64_t seed, float scale, float offset = 0.0f) {
  bf16* p = nullptr;
  CK(cudaMalloc(&p, size_t(n) * sizeof(bf16)));
  fill_kernel<<<1024, 256>>>(p, n, seed, scale, offset);
  CK(cudaGetLastError());
  return p;
}

struct Layer {
  bf16 *qkv, *o, *gate_up, *down, *ln1, *ln2;
};

}  // namespace

int main(int argc, char** argv) {
  const int layers = argc > 1 ? std::atoi(argv[1]) : 32;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  cudaDeviceProp props{};
  CK(cudaGetDeviceProperties(&props, 0));
  const int sms = props.multiProcessorCount;
  std::printf("device: %s, %d SMs; %d layers of Phi-3-mini's decode matmuls at m = 1\n", props.name, sms, layers);

  std::vector<Layer> weights(static_cast<size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    const uint64_t s = uint64_t(10 * l);
    weights[size_t(l)] = {alloc_fill(int64_t(kQkv) * kHidden, s + 1, 0.03f),
                    alloc_fill(int64_t(kHidden) * kHidden, s + 2, 0.03f),
                    alloc_fill(int64_t(2 * kInter) * kHidden, s + 3, 0.03f),
                    alloc_fill(int64_t(kHidden) * kInter, s + 4, 0.02f),
                    alloc_fill(kHidden, s + 5, 0.2f, 1.0f),
                    alloc_fill(kHidden, s + 6, 0.2f, 1.0f)};
  }
  bf16* residual0 = alloc_fill(kHidden, 999, 1.0f);
  bf16 *residual, *qkv_y, *gate_up_y;
  CK(cudaMalloc(&residual, kHidden * sizeof(bf16)));
  CK(cudaMalloc(&qkv_y, kQkv * sizeof(bf16)));
  CK(cudaMalloc(&gate_up_y, 2 * kInter * sizeof(bf16)));

  // The step's products in order: qkv (norm), then a layer at a time o
  // (+= residual), gate_up (norm), down (silu·mul, += residual), the next qkv.
  std::vector<ChainStage> stages;
  auto stage = [](const bf16* w, const bf16* src, bf16* y, int n, int k, int acc, RowPrologue pro) {
    ChainStage st;
    st.w = w, st.src = src, st.y = y, st.n = n, st.k = k, st.ldw = k, st.accumulate = acc, st.prologue = pro;
    return st;
  };
  for (int l = 0; l < layers; ++l) {
    const Layer& w = weights[size_t(l)];
    RowPrologue n1{RowPrologue::rms_norm, w.ln1, kEps}, n2{RowPrologue::rms_norm, w.ln2, kEps},
        sm{RowPrologue::silu_mul, nullptr, 0.0f};
    stages.push_back(stage(w.qkv, residual, qkv_y, kQkv, kHidden, 0, n1));
    stages.push_back(stage(w.o, qkv_y, residual, kHidden, kHidden, 1, {}));
    stages.push_back(stage(w.gate_up, residual, gate_up_y, 2 * kInter, kHidden, 0, n2));
    stages.push_back(stage(w.down, gate_up_y, residual, kHidden, kInter, 1, sm));
  }
  unsigned* barrier = nullptr;
  CK(cudaMalloc(&barrier, sizeof(unsigned)));
  CK(cudaMemset(barrier, 0, sizeof(unsigned)));
  int* counters = nullptr;
  CK(cudaMalloc(&counters, philora::cuda::kSkinnyCounters * sizeof(int)));
  CK(cudaMemset(counters, 0, philora::cuda::kSkinnyCounters * sizeof(int)));

  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto reset = [&] {
    CK(cudaMemcpyAsync(residual, residual0, kHidden * sizeof(bf16), cudaMemcpyDeviceToDevice, stream));
  };

  // The library's GEMV launches (2 blocks an SM, its best at every m = 1 shape), captured in a graph.
  auto gemv_chain = [&](int per_sm) {
    for (const ChainStage& st : stages) {
      philora::cuda::SkinnyGemmArgs a;
      a.x = st.src, a.w = st.w, a.y = st.y, a.m = 1, a.n = st.n, a.k = st.k, a.ldw = st.ldw;
      a.accumulate = st.accumulate != 0;
      a.prologue = st.prologue;
      philora::cuda::launch_skinny_gemm(a, philora::cuda::skinny_gemm_grid(a, sms, per_sm), nullptr, counters,
                                        stream);
    }
  };
  auto capture = [&](auto&& body) {
    cudaGraph_t g;
    cudaGraphExec_t e;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    body();
    CK(cudaStreamEndCapture(stream, &g));
    CK(cudaGraphInstantiate(&e, g, 0));
    CK(cudaGraphDestroy(g));
    return e;
  };
  struct Version {
    const char* name;
    cudaGraphExec_t graph;
    bool check;  // compared with the reference (false: a timing-only variant)
  };
  std::vector<Version> versions = {
      {"GEMV launches, 2 blocks/SM (library)", capture([&] { gemv_chain(2); }), true},
      {"GEMV launches, 1 block/SM (library)", capture([&] { gemv_chain(1); }), true},
  };
  // The chains as the model makes them: qkv of layer 0 alone (a GEMV), then
  // (o, gate_up, down, next qkv) a launch.
  auto add = [&](const char* name, auto kernel, int warps_per_block, size_t smem, int skip) {
    CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, warps_per_block * 32, smem));
    if (per_sm < 1) {
      std::printf("%-44s does not fit an SM (%zu B of shared memory)\n", name, smem);
      return;
    }
    versions.push_back({name, capture([=, &stream, &stages] {
                          philora::cuda::SkinnyGemmArgs a;
                          const ChainStage& q = stages[0];
                          a.x = q.src, a.w = q.w, a.y = q.y, a.m = 1, a.n = q.n, a.k = q.k, a.ldw = q.ldw;
                          a.prologue = q.prologue;
                          philora::cuda::launch_skinny_gemm(a, philora::cuda::skinny_gemm_grid(a, sms, 2), nullptr,
                                                            counters, stream);
                          for (size_t s0 = 1; s0 < stages.size(); s0 += 4) {
                            ChainArgs ca;
                            ca.num_stages = int(std::min<size_t>(4, stages.size() - s0));
                            for (int i = 0; i < ca.num_stages; ++i) ca.stages[i] = stages[s0 + size_t(i)];
                            ca.barrier = barrier;
                            philora::cuda::launch_chained(kernel, dim3(unsigned(sms)),
                                                          dim3(unsigned(warps_per_block * 32)), smem, stream, ca,
                                                          skip);
                          }
                        }),
                        skip == 0});
  };
  using namespace philora::cuda::chain;
  add("chain 16 warps, depth  6, TMA bulk", gemv_chain_kernel<16, 6, true>, 16, smem_bytes<16, 6>(), 0);
  add("chain 16 warps, depth  4, TMA bulk", gemv_chain_kernel<16, 4, true>, 16, smem_bytes<16, 4>(), 0);
  add("chain 24 warps, depth  4, TMA bulk", gemv_chain_kernel<24, 4, true>, 24, smem_bytes<24, 4>(), 0);
  add("chain  8 warps, depth 12, TMA bulk", gemv_chain_kernel<8, 12, true>, 8, smem_bytes<8, 12>(), 0);
  add("chain 16 warps, depth  6, cp.async", gemv_chain_kernel<16, 6, false>, 16, smem_bytes<16, 6>(), 0);
  add("chain  8 warps, depth 12, cp.async", gemv_chain_kernel<8, 12, false>, 8, smem_bytes<8, 12>(), 0);
  add("  (16 w, d 6, TMA: no barriers, timing)", gemv_chain_kernel<16, 6, true>, 16, smem_bytes<16, 6>(), 1);

  // Same bits: final residual and last qkv output of every version against the first.
  std::vector<uint16_t> ref_res(kHidden), ref_qkv(kQkv), got(kQkv);
  bool all_equal = true;
  for (size_t v = 0; v < versions.size(); ++v) {
    CK(cudaMemsetAsync(qkv_y, 0xff, kQkv * sizeof(bf16), stream));  // poison: NaN
    CK(cudaMemsetAsync(gate_up_y, 0xff, 2 * kInter * sizeof(bf16), stream));
    reset();
    CK(cudaGraphLaunch(versions[v].graph, stream));
    CK(cudaStreamSynchronize(stream));
    if (v == 0) {
      CK(cudaMemcpy(ref_res.data(), residual, kHidden * sizeof(bf16), cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(ref_qkv.data(), qkv_y, kQkv * sizeof(bf16), cudaMemcpyDeviceToHost));
      int nan = 0;
      for (uint16_t b : ref_res) nan += (b & 0x7f80) == 0x7f80;
      std::printf("reference residual: %d non-finite of %d\n", nan, kHidden);
      continue;
    }
    if (!versions[v].check) continue;
    CK(cudaMemcpy(got.data(), residual, kHidden * sizeof(bf16), cudaMemcpyDeviceToHost));
    int diff = 0;
    for (int i = 0; i < kHidden; ++i) diff += got[size_t(i)] != ref_res[size_t(i)];
    CK(cudaMemcpy(got.data(), qkv_y, kQkv * sizeof(bf16), cudaMemcpyDeviceToHost));
    for (int i = 0; i < kQkv; ++i) diff += got[size_t(i)] != ref_qkv[size_t(i)];
    std::printf("%-44s %s (%d of %d values differ)\n", versions[v].name, diff ? "DIFFERS" : "same bits", diff,
                kHidden + kQkv);
    all_equal = all_equal && diff == 0;
  }

  // Timing: events around each graph launch, versions interleaved, median of reps.
  const double bytes = double(layers) * 2.0 *
                       (double(kQkv) * kHidden + double(kHidden) * kHidden + 2.0 * kInter * kHidden +
                        double(kHidden) * kInter);
  std::vector<std::vector<float>> ms(versions.size());
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int r = 0; r < reps + 2; ++r)
    for (size_t v = 0; v < versions.size(); ++v) {
      reset();
      CK(cudaEventRecord(a, stream));
      CK(cudaGraphLaunch(versions[v].graph, stream));
      CK(cudaEventRecord(b, stream));
      CK(cudaEventSynchronize(b));
      float t = 0;
      CK(cudaEventElapsedTime(&t, a, b));
      if (r >= 2) ms[v].push_back(t);
    }
  std::printf("\n%.2f GB of weights a pass (%d layers × qkv, o, gate_up, down)\n", bytes * 1e-9, layers);
  std::printf("%-44s %9s %9s %9s %8s\n", "version", "median ms", "min ms", "us/layer", "GB/s");
  for (size_t v = 0; v < versions.size(); ++v) {
    std::vector<float> t = ms[v];
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2];
    std::printf("%-44s %9.3f %9.3f %9.2f %8.0f\n", versions[v].name, med, double(t.front()), med * 1e3 / layers,
                bytes / (med * 1e-3) * 1e-9);
  }
  return all_equal ? 0 : 3;
}
