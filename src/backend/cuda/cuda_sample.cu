#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_sample.cuh"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <climits>

namespace philora::cuda {

namespace {

// One block per row, in passes over the row's logits (from L2 after the first):
//   1. the max and its first index; greedy rows (and top_k = 1) stop here.
//   2. top-k, when 0 < k < vocab: a radix select over 16-bit order-preserving
//      keys of the logits, 4 bits a level, finds the k-th largest key and how
//      many of its ties to take; a scan of tie counts in vocabulary order finds
//      the last tie taken (ties go in ascending index).
//   3. top-p, when top_p < 1: the same select with masses (sums of w over the
//      top-k set) instead of counts finds the key at which the mass from the
//      largest keys down reaches top_p · Σw; a scan of tie masses finds the tie
//      at which it is reached.
//   4. a scan of the kept weights in vocabulary order; the one thread whose
//      part of the running sum passes uniform · Σ_kept w walks its part.
// Passes whose result ignores the order (1 and the histograms) stride over the
// row with 16-byte loads. Passes that scan give each thread a contiguous chunk
// of the row, so that an exclusive scan of per-thread sums is a running sum in
// vocabulary order. Every reduction and scan has a fixed order: no float atomics.
// 1024 threads (so at most 64 registers each): the passes are latency-bound,
// and a decode batch (up to one row per SM) leaves most SMs one block.
constexpr int kThreads = 1024;
constexpr int kDigitBits = 4;
constexpr int kBins = 1 << kDigitBits;
constexpr int kKeyBits = 16;  // the keys of bf16 logits

// ---- logits as keys ---------------------------------------------------------

// bf16 bits of a logit with NaN made -inf and -0 made +0: equal logits, equal bits.
__device__ __forceinline__ uint32_t canonical(uint16_t bits) {
  if ((bits & 0x7fffu) > 0x7f80u) return 0xff80u;
  if (bits == 0x8000u) return 0;
  return bits;
}

__device__ __forceinline__ float value_of(uint32_t bits) { return __uint_as_float(bits << 16); }

// Order-preserving: key_of(a) > key_of(b) iff logit a > logit b.
__device__ __forceinline__ uint32_t key_of(uint32_t bits) {
  return (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
}

__device__ __forceinline__ uint32_t digit_of(uint32_t key, int shift) {
  return (key >> shift) & (kBins - 1);
}

// w = exp((logit - max) / T) = 2^((logit - max) · log2(e) / T), in f32 (the cpu
// backend: f64). logit - max is exact for bf16 logits; the weights that matter
// (w > e^-20) are within a few 1e-6 of the cpu's.
struct Weight {
  float max;
  float scale;  // log2(e) / T, finite (a tiny T leaves only the max with weight)
  __device__ Weight(float max_logit, float temperature)
      : max(max_logit), scale(fminf(1.44269504088896341f / temperature, FLT_MAX)) {}
  __device__ float operator()(uint32_t bits) const { return exp2f((value_of(bits) - max) * scale); }
};

// ---- the row and this thread's part of it ------------------------------------

union Bf16x8Bits {
  uint4 u;
  uint16_t h[8];
};

struct Row {
  const uint16_t* logits;  // [vocab] bf16 bits
  int vocab;
  bool vec;   // loads of eight: vocab % 8 == 0 and the logits 16-byte aligned
  int begin;  // this thread's contiguous chunk [begin, end)
  int end;
};

__device__ Row row_of(const SampleArgs& a, bool vec) {
  Row r;
  r.logits = static_cast<const uint16_t*>(a.logits) + int64_t(blockIdx.x) * a.vocab;
  r.vocab = a.vocab;
  r.vec = vec;
  const int64_t step = vec ? 8 : 1;
  const int64_t chunk = (a.vocab + kThreads * step - 1) / (kThreads * step) * step;
  r.begin = int(min(int64_t(a.vocab), threadIdx.x * chunk));
  r.end = int(min(int64_t(a.vocab), r.begin + chunk));
  return r;
}

// f(i, bits) for i = t, t + kThreads, ... (of eight at a time when vec): thread
// t's share in an order that is fixed but not the vocabulary's.
template <typename F>
__device__ __forceinline__ void for_strided(const Row& r, F&& f) {
  const int t = int(threadIdx.x);
  if (r.vec) {
    const uint4* v = reinterpret_cast<const uint4*>(r.logits);
    for (int j = t; j < r.vocab / 8; j += kThreads) {
      Bf16x8Bits x;
      x.u = v[j];
#pragma unroll
      for (int e = 0; e < 8; ++e) f(8 * j + e, canonical(x.h[e]));
    }
  } else {
    for (int i = t; i < r.vocab; i += kThreads) f(i, canonical(r.logits[i]));
  }
}

// f(i, bits) over this thread's chunk in vocabulary order, until f returns true.
template <typename F>
__device__ __forceinline__ void for_chunk(const Row& r, F&& f) {
  if (r.vec) {
    for (int i = r.begin; i < r.end; i += 8) {
      Bf16x8Bits x;
      x.u = *reinterpret_cast<const uint4*>(r.logits + i);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (f(i + e, canonical(x.h[e]))) return;
    }
  } else {
    for (int i = r.begin; i < r.end; ++i)
      if (f(i, canonical(r.logits[i]))) return;
  }
}

// ---- block-wide steps ---------------------------------------------------------

struct ArgMax {
  float value;
  int index;
};
struct ArgMaxOp {  // the larger value; of equal values the smaller index
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return a.value > b.value || (a.value == b.value && a.index < b.index) ? a : b;
  }
};

template <typename T>
struct Bins {
  T v[kBins];  // [digit]
};
template <typename T>
struct BinsSum {
  __device__ Bins<T> operator()(const Bins<T>& a, const Bins<T>& b) const {
    Bins<T> s;
#pragma unroll
    for (int d = 0; d < kBins; ++d) s.v[d] = a.v[d] + b.v[d];
    return s;
  }
};

struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// The state of a radix select, from level to level.
struct Select {
  uint32_t prefix;  // the digits chosen so far (the rest 0)
  int need;         // top-k: how many of the keys under the prefix are still to take
  float above;      // top-p: mass of the keys above the prefix's group
  float target;     // top-p: top_p · Σw
};

// Keeps the keys above `key`, and the ties at `key` up to index `last`: a
// top-k or top-p set. The default keeps everything.
struct Cut {
  uint32_t key = 0;
  int last = INT_MAX;
  __device__ bool keeps(uint32_t k, int i) const { return k > key || (k == key && i <= last); }
};

using ArgMaxReduce = cub::BlockReduce<ArgMax, kThreads>;
using CountReduce = cub::BlockReduce<Bins<int>, kThreads>;
using MassReduce = cub::BlockReduce<Bins<float>, kThreads>;
using IntReduce = cub::BlockReduce<int, kThreads>;
using IntScan = cub::BlockScan<int, kThreads>;
using FloatScan = cub::BlockScan<float, kThreads>;

struct Shared {
  union {
    ArgMaxReduce::TempStorage argmax;
    CountReduce::TempStorage counts;
    MassReduce::TempStorage masses;
    IntReduce::TempStorage ints;
    IntScan::TempStorage int_scan;
    FloatScan::TempStorage float_scan;
  } cub;
  // One thread's values, for the block.
  ArgMax max;
  Select select;
  int value;
};

// Thread 0's `v` (where block reductions land) for every thread. Leaves the
// CUB storage free for the next step.
template <typename T>
__device__ __forceinline__ T broadcast(const T& v, T& slot) {
  if (threadIdx.x == 0) slot = v;
  __syncthreads();
  const T out = slot;
  __syncthreads();
  return out;
}

__device__ int block_min(int v, Shared& s) {
  return broadcast(IntReduce(s.cub.ints).Reduce(v, MinOp()), s.value);
}
__device__ int block_max(int v, Shared& s) {
  return broadcast(IntReduce(s.cub.ints).Reduce(v, MaxOp()), s.value);
}

__device__ int exclusive_sum(int v, Shared& s) {
  int before;
  IntScan(s.cub.int_scan).ExclusiveSum(v, before);
  __syncthreads();
  return before;
}
__device__ float exclusive_sum(float v, float& total, Shared& s) {
  float before;
  FloatScan(s.cub.float_scan).ExclusiveSum(v, before, total);
  __syncthreads();
  return before;
}

// ---- the passes ------------------------------------------------------------------

// The max logit and its first index.
__device__ ArgMax row_max(const Row& r, Shared& s) {
  ArgMax m{-INFINITY, INT_MAX};
  for_strided(r, [&](int i, uint32_t bits) {  // i grows: strict > keeps the first
    const float x = value_of(bits);
    if (x > m.value || m.index == INT_MAX) m = {x, i};
  });
  return broadcast(ArgMaxReduce(s.cub.argmax).Reduce(m, ArgMaxOp()), s.max);
}

// The top k (0 < k < vocab) in (logit desc, index asc) order.
__device__ Cut top_k_cut(const Row& r, int k, Shared& s) {
  Select sel{0, k, 0.0f, 0.0f};
  for (int shift = kKeyBits - kDigitBits; shift >= 0; shift -= kDigitBits) {
    // Counts of the next digit among the keys under the prefix.
    const uint32_t group = sel.prefix >> (shift + kDigitBits);
    Bins<int> h = {};
    for_strided(r, [&](int, uint32_t bits) {
      const uint32_t key = key_of(bits);
      if (key >> (shift + kDigitBits) != group) return;
      const uint32_t d = digit_of(key, shift);
#pragma unroll
      for (int b = 0; b < kBins; ++b) h.v[b] += d == uint32_t(b);
    });
    h = CountReduce(s.cub.counts).Reduce(h, BinsSum<int>());
    if (threadIdx.x == 0) {  // the digit of the need-th largest, from the top
      int d = kBins - 1;
      for (; d > 0 && h.v[d] < sel.need; --d) sel.need -= h.v[d];
      sel.prefix |= uint32_t(d) << shift;
    }
    sel = broadcast(sel, s.select);
  }
  // The k-th largest key is sel.prefix; of its ties the first sel.need are taken.
  int ties = 0;
  for_chunk(r, [&](int, uint32_t bits) {
    ties += key_of(bits) == sel.prefix;
    return false;
  });
  const int before = exclusive_sum(ties, s);
  int last = INT_MAX;
  if (before < sel.need && sel.need <= before + ties) {
    int seen = before;
    for_chunk(r, [&](int i, uint32_t bits) {
      if (key_of(bits) != sel.prefix || ++seen < sel.need) return false;
      last = i;
      return true;
    });
  }
  return {sel.prefix, block_min(last, s)};
}

// The shortest prefix of topk's set in (logit desc, index asc) order whose mass
// reaches top_p · Σw.
__device__ Cut top_p_cut(const Row& r, const Cut& topk, const Weight& weight, float top_p,
                         Shared& s) {
  Select sel{0, 0, 0.0f, 0.0f};
  for (int shift = kKeyBits - kDigitBits; shift >= 0; shift -= kDigitBits) {
    // Masses of the next digit among the set's keys under the prefix.
    const uint32_t group = sel.prefix >> (shift + kDigitBits);
    Bins<float> h = {};
    for_strided(r, [&](int i, uint32_t bits) {
      const uint32_t key = key_of(bits);
      if (key >> (shift + kDigitBits) != group || !topk.keeps(key, i)) return;
      const uint32_t d = digit_of(key, shift);
      const float w = weight(bits);
#pragma unroll
      for (int b = 0; b < kBins; ++b) h.v[b] += d == uint32_t(b) ? w : 0.0f;
    });
    h = MassReduce(s.cub.masses).Reduce(h, BinsSum<float>());
    if (threadIdx.x == 0) {
      if (shift == kKeyBits - kDigitBits) {  // the first level holds the whole set
        float sum = 0.0f;
        for (int b = 0; b < kBins; ++b) sum += h.v[b];
        sel.target = top_p * sum;
      }
      // The digit at which the mass reaches the target, from the top. A digit
      // without mass never does (so top_p ≤ 0 keeps the max); when rounding
      // leaves the target unreached, digit 0 takes the whole group.
      int d = kBins - 1;
      for (; d > 0 && !(h.v[d] > 0.0f && sel.above + h.v[d] >= sel.target); --d)
        sel.above += h.v[d];
      sel.prefix |= uint32_t(d) << shift;
    }
    sel = broadcast(sel, s.select);
  }
  // Ties at sel.prefix in vocabulary order until above + their mass reaches the
  // target. Thread t's running mass at tie i is above + (before_t + its own sum
  // up to i), the same additions in the scan's input and in the walk.
  float own = 0.0f;
  int count = 0;
  for_chunk(r, [&](int i, uint32_t bits) {
    const uint32_t key = key_of(bits);
    if (key == sel.prefix && topk.keeps(key, i)) {
      own += weight(bits);
      ++count;
    }
    return false;
  });
  float total;
  const float before = exclusive_sum(own, total, s);
  const bool reaches = count > 0 && sel.above + (before + own) >= sel.target;
  const int first = block_min(reaches ? int(threadIdx.x) : kThreads, s);
  int last = INT_MAX;  // no thread reaches it (rounding): all the ties
  if (int(threadIdx.x) == first) {
    float mass = 0.0f;
    for_chunk(r, [&](int i, uint32_t bits) {
      const uint32_t key = key_of(bits);
      if (key != sel.prefix || !topk.keeps(key, i)) return false;
      mass += weight(bits);
      if (!(sel.above + (before + mass) >= sel.target)) return false;
      last = i;
      return true;
    });
  }
  return {sel.prefix, block_min(last, s)};
}

// The first kept token in vocabulary order whose running sum of w exceeds
// uniform · Σ_kept w; the last kept one when rounding leaves none.
__device__ int walk_kept(const Row& r, const Cut& topk, const Cut& topp, const Weight& weight,
                         float uniform, Shared& s) {
  auto kept = [&](int i, uint32_t key) { return topk.keeps(key, i) && topp.keeps(key, i); };
  float own = 0.0f;
  int count = 0, last = -1;
  for_chunk(r, [&](int i, uint32_t bits) {
    if (kept(i, key_of(bits))) {
      own += weight(bits);
      ++count;
      last = i;
    }
    return false;
  });
  float total;
  const float before = exclusive_sum(own, total, s);
  const float threshold = uniform * total;
  // Thread t's running sum at token i is before_t + its own sum up to i: it
  // passes the threshold in t's chunk iff before_t + own_t does.
  const bool passes = count > 0 && before + own > threshold;
  const int first = block_min(passes ? int(threadIdx.x) : kThreads, s);
  if (first == kThreads) return block_max(last, s);
  int chosen = INT_MAX;
  if (int(threadIdx.x) == first) {
    float sum = 0.0f;
    for_chunk(r, [&](int i, uint32_t bits) {
      if (!kept(i, key_of(bits))) return false;
      sum += weight(bits);
      if (!(before + sum > threshold)) return false;
      chosen = i;
      return true;
    });
  }
  return block_min(chosen, s);
}

// grid (R), block (kThreads): out[row] by SamplingPlan's rule.
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a, bool vec) {
  chained_prologue();
  __shared__ Shared s;
  const int64_t row = blockIdx.x;
  const Row r = row_of(a, vec);
  const ArgMax m = row_max(r, s);
  const float temperature = a.temperature[row];
  const int k = a.top_k[row];
  const float top_p = a.top_p[row];
  int token = m.index;
  // Greedy: T ≤ 0 (or NaN), a row without a finite max (its weights would be
  // NaN), or top_k = 1 (the first index of the max).
  if (temperature > 0.0f && isfinite(m.value) && k != 1) {
    Cut topk, topp;
    if (k > 0 && k < r.vocab) topk = top_k_cut(r, k, s);
    const Weight weight(m.value, temperature);
    if (top_p < 1.0f) topp = top_p_cut(r, topk, weight, top_p, s);
    token = walk_kept(r, topk, topp, weight, a.uniform[row], s);
  }
  if (threadIdx.x == 0) a.out[row] = token;
}

}  // namespace

void launch_sample(const SampleArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const bool vec = a.vocab % 8 == 0 && aligned16(a.logits);
  launch_chained(sample_kernel, dim3(unsigned(a.rows)), dim3(kThreads), 0, stream, a, vec);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
