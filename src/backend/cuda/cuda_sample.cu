#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_sample.cuh"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <climits>

namespace philora::cuda {

namespace {

// One block per row, in passes over the row (from L2 after the first):
//   1. x = the logits as f32 into the scratch row, -inf where the row's mask
//      clears the token (raw logprobs: the max and Σ exp of the logits before
//      the mask); then the bias list scattered into x.
//   2. penalties from the row's counts, in place; the max and its first index
//      (greedy rows stop here), and Σ exp for processed greedy logprobs.
//   3. top-k: a radix select over order-preserving keys of x, 4 bits a level,
//      finds the k-th largest key among the candidates (finite x with
//      w ≥ min_p) and how many of its ties to take; a scan of tie counts in
//      vocabulary order finds the last tie taken (ties go in ascending index).
//   4. top-p: the same select with masses (sums of w over the top-k set)
//      instead of counts finds the key at which the mass from the largest keys
//      down reaches top_p · Σw; a scan of tie masses finds the tie at which it
//      is reached.
//   5. typical-p: μ = Σ w log w / Σ w over the kept set, then the same mass
//      select over keys of s = |log w − μ| in ascending s finds the smallest s
//      whose group reaches typical_p · Σw; its ties are all kept.
//   6. a scan of the kept weights in vocabulary order; the one thread whose
//      part of the running sum passes uniform · Σ_kept w walks its part.
//   7. logprobs: the target's, and a top-k select (the same as 3) over the
//      logprobs' keys, its k tokens gathered and sorted in shared memory.
// A row whose logits are all bf16 values (no count row, no finite bias)
// selects over the high 16 bits of the keys only. Passes that scan give each
// thread a contiguous chunk of the row, so that an exclusive scan of
// per-thread sums is a running sum in vocabulary order. Every reduction and
// scan has a fixed order: no float atomics. 1024 threads: the passes are
// latency-bound, and a decode batch (up to one row per SM) leaves most SMs one block.
constexpr int kThreads = 1024;
constexpr int kDigitBits = 4;
constexpr int kBins = 1 << kDigitBits;
constexpr float kLog2e = 1.44269504088896341f;

// ---- logits and keys --------------------------------------------------------

// A bf16 logit as f32, NaN as -inf.
__device__ __forceinline__ float bf16_logit(uint16_t bits) {
  if ((bits & 0x7fffu) > 0x7f80u) return -INFINITY;
  return __uint_as_float(uint32_t(bits) << 16);
}

// Order-preserving keys of f32 values (no NaN): key(a) > key(b) iff a > b, -0
// as +0. The key of a value is never 0: 0 marks "not a candidate" in selects.
__device__ __forceinline__ uint32_t key32(float v) {
  uint32_t u = __float_as_uint(v);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The same order for bf16 values, in the high 16 bits (the low 16 are 0), so
// that a select can stop after the high half.
__device__ __forceinline__ uint32_t key16(float v) {
  uint32_t u = __float_as_uint(v) >> 16;
  if (u == 0x8000u) u = 0;
  return ((u & 0x8000u) ? (~u & 0xffffu) : (u | 0x8000u)) << 16;
}

// The bits of a key above `bits` (0 when bits ≥ 32).
__device__ __forceinline__ uint32_t high(uint32_t key, int bits) {
  return bits >= 32 ? 0u : key >> bits;
}

// w = exp((x - max) / T) = 2^((x - max) · log2(e) / T), in f32 (the cpu
// backend: f64); log2(w) for typical-p.
struct Weight {
  float max;
  float scale;  // log2(e) / T, finite (a tiny T leaves only the max with weight)
  __device__ Weight(float max_logit, float temperature)
      : max(max_logit), scale(fminf(kLog2e / temperature, FLT_MAX)) {}
  __device__ float log2w(float x) const { return (x - max) * scale; }
  __device__ float operator()(float x) const { return exp2f(log2w(x)); }
};

// ---- the row and this thread's part of it ------------------------------------

struct Row {
  const uint16_t* raw;  // [vocab] bf16 bits: the logits
  float* x;             // [vocab] the processed logits (scratch)
  int vocab;
  int begin;  // this thread's contiguous chunk [begin, end)
  int end;
  bool exact16;  // every x is a bf16 value: keys of the high 16 bits
  __device__ uint32_t key(float v) const { return exact16 ? key16(v) : key32(v); }
  __device__ int low_shift() const { return exact16 ? 16 : 0; }
};

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
__device__ __forceinline__ void add(ArgMax& m, float v,
                                    int i) {  // i grows: strict > keeps the first
  if (v > m.value || m.index == INT_MAX) m = {v, i};
}

// Σ exp(v - max) with its max, merged online.
struct MaxSum {
  float max;
  float sum;
};
struct MaxSumOp {
  __device__ MaxSum operator()(const MaxSum& a, const MaxSum& b) const {
    const float m = fmaxf(a.max, b.max);
    if (m == -INFINITY) return {m, 0.0f};
    return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
  }
};
__device__ __forceinline__ void add(MaxSum& a, float v) {
  if (v == -INFINITY) return;
  if (v > a.max) {
    a.sum = a.sum * expf(a.max - v) + 1.0f;
    a.max = v;
  } else {
    a.sum += expf(v - a.max);
  }
}

struct Sum2 {
  float a, b;
};
struct Sum2Op {
  __device__ Sum2 operator()(const Sum2& x, const Sum2& y) const { return {x.a + y.a, x.b + y.b}; }
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
  float above;      // mass selects: mass of the keys above the prefix's group
  float target;     // mass selects: fraction · Σw
};

// Keeps the keys above `key`, and the ties at `key` up to index `last`: a
// top-k, top-p or typical set. The default keeps everything.
struct Cut {
  uint32_t key = 0;
  int last = INT_MAX;
  __device__ bool keeps(uint32_t k, int i) const { return k > key || (k == key && i <= last); }
};

using ArgMaxReduce = cub::BlockReduce<ArgMax, kThreads>;
using MaxSumReduce = cub::BlockReduce<MaxSum, kThreads>;
using Sum2Reduce = cub::BlockReduce<Sum2, kThreads>;
using CountReduce = cub::BlockReduce<Bins<int>, kThreads>;
using MassReduce = cub::BlockReduce<Bins<float>, kThreads>;
using IntReduce = cub::BlockReduce<int, kThreads>;
using IntScan = cub::BlockScan<int, kThreads>;
using FloatScan = cub::BlockScan<float, kThreads>;

struct Shared {
  union {
    ArgMaxReduce::TempStorage argmax;
    MaxSumReduce::TempStorage maxsum;
    Sum2Reduce::TempStorage sum2;
    CountReduce::TempStorage counts;
    MassReduce::TempStorage masses;
    IntReduce::TempStorage ints;
    IntScan::TempStorage int_scan;
    FloatScan::TempStorage float_scan;
  } cub;
  // One thread's values, for the block.
  ArgMax max;
  MaxSum maxsum;
  Sum2 sum2;
  Select select;
  int value;
  // The top logprobs, gathered before they are sorted.
  int gathered;
  uint32_t gather_key[kMaxTopLogprobs];
  int gather_index[kMaxTopLogprobs];
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

// ---- the selects -----------------------------------------------------------------

// The k largest of the keys key_at(i) (0: not a candidate; ties in
// ascending index), over levels of 4 bits from the top down to low_shift.
template <typename KeyAt>
__device__ Cut top_k_cut(const Row& r, int k, int low_shift, const KeyAt& key_at, Shared& s) {
  Select sel{0, k, 0.0f, 0.0f};
  for (int shift = 32 - kDigitBits; shift >= low_shift; shift -= kDigitBits) {
    // Counts of the next digit among the keys under the prefix.
    const uint32_t group = high(sel.prefix, shift + kDigitBits);
    Bins<int> h = {};
    for (int i = int(threadIdx.x); i < r.vocab; i += kThreads) {
      const uint32_t key = key_at(i);
      if (high(key, shift + kDigitBits) != group) continue;
      const uint32_t d = (key >> shift) & (kBins - 1);
#pragma unroll
      for (int b = 0; b < kBins; ++b) h.v[b] += d == uint32_t(b);
    }
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
  for (int i = r.begin; i < r.end; ++i) ties += key_at(i) == sel.prefix;
  const int before = exclusive_sum(ties, s);
  int last = INT_MAX;
  if (before < sel.need && sel.need <= before + ties) {
    int seen = before;
    for (int i = r.begin; i < r.end; ++i) {
      if (key_at(i) != sel.prefix || ++seen < sel.need) continue;
      last = i;
      break;
    }
  }
  return {sel.prefix, block_min(last, s)};
}

// The shortest run of candidates from the largest key down whose mass
// (mass_at, over candidates: key_at(i) > 0) reaches fraction · their total.
// With refine_ties, the ties of the last key count in vocabulary order and
// the cut ends at the tie that reaches the target (top-p); without, all the
// ties are kept (typical-p).
template <typename KeyAt, typename MassAt>
__device__ Cut mass_cut(const Row& r, int low_shift, float fraction, bool refine_ties,
                        const KeyAt& key_at, const MassAt& mass_at, Shared& s) {
  Select sel{0, 0, 0.0f, 0.0f};
  for (int shift = 32 - kDigitBits; shift >= low_shift; shift -= kDigitBits) {
    // Masses of the next digit among the candidates under the prefix.
    const uint32_t group = high(sel.prefix, shift + kDigitBits);
    Bins<float> h = {};
    for (int i = int(threadIdx.x); i < r.vocab; i += kThreads) {
      const uint32_t key = key_at(i);
      if (key == 0 || high(key, shift + kDigitBits) != group) continue;
      const uint32_t d = (key >> shift) & (kBins - 1);
      const float w = mass_at(i);
#pragma unroll
      for (int b = 0; b < kBins; ++b) h.v[b] += d == uint32_t(b) ? w : 0.0f;
    }
    h = MassReduce(s.cub.masses).Reduce(h, BinsSum<float>());
    if (threadIdx.x == 0) {
      if (shift == 32 - kDigitBits) {  // the first level holds the whole set
        float sum = 0.0f;
        for (int b = 0; b < kBins; ++b) sum += h.v[b];
        sel.target = fraction * sum;
      }
      // The digit at which the mass reaches the target, from the top. A digit
      // without mass never does (so a fraction ≤ 0 keeps the largest); when
      // rounding leaves the target unreached, digit 0 takes the whole group.
      int d = kBins - 1;
      for (; d > 0 && !(h.v[d] > 0.0f && sel.above + h.v[d] >= sel.target); --d)
        sel.above += h.v[d];
      sel.prefix |= uint32_t(d) << shift;
    }
    sel = broadcast(sel, s.select);
  }
  if (!refine_ties) return {sel.prefix, INT_MAX};
  // Ties at sel.prefix in vocabulary order until above + their mass reaches the
  // target. Thread t's running mass at tie i is above + (before_t + its own sum
  // up to i), the same additions in the scan's input and in the walk.
  float own = 0.0f;
  int count = 0;
  for (int i = r.begin; i < r.end; ++i)
    if (key_at(i) == sel.prefix) {
      own += mass_at(i);
      ++count;
    }
  float total;
  const float before = exclusive_sum(own, total, s);
  const bool reaches = count > 0 && sel.above + (before + own) >= sel.target;
  const int first = block_min(reaches ? int(threadIdx.x) : kThreads, s);
  int last = INT_MAX;  // no thread reaches it (rounding): all the ties
  if (int(threadIdx.x) == first) {
    float mass = 0.0f;
    for (int i = r.begin; i < r.end; ++i) {
      if (key_at(i) != sel.prefix) continue;
      mass += mass_at(i);
      if (!(sel.above + (before + mass) >= sel.target)) continue;
      last = i;
      break;
    }
  }
  return {sel.prefix, block_min(last, s)};
}

struct Walked {
  int token;
  float total;  // Σ_kept w
};

// The first kept token in vocabulary order whose running sum of w exceeds
// uniform · Σ_kept w; the last kept one when rounding leaves none.
template <typename KeptAt, typename MassAt>
__device__ Walked walk_kept(const Row& r, float uniform, const KeptAt& kept, const MassAt& mass_at,
                            Shared& s) {
  float own = 0.0f;
  int count = 0, last = -1;
  for (int i = r.begin; i < r.end; ++i)
    if (kept(i)) {
      own += mass_at(i);
      ++count;
      last = i;
    }
  float total;
  const float before = exclusive_sum(own, total, s);
  const float threshold = uniform * total;
  // Thread t's running sum at token i is before_t + its own sum up to i: it
  // passes the threshold in t's chunk iff before_t + own_t does.
  const bool passes = count > 0 && before + own > threshold;
  const int first = block_min(passes ? int(threadIdx.x) : kThreads, s);
  if (first == kThreads) return {block_max(last, s), total};
  int chosen = INT_MAX;
  if (int(threadIdx.x) == first) {
    float sum = 0.0f;
    for (int i = r.begin; i < r.end; ++i) {
      if (!kept(i)) continue;
      sum += mass_at(i);
      if (!(before + sum > threshold)) continue;
      chosen = i;
      break;
    }
  }
  return {block_min(chosen, s), total};
}

// The k tokens of the largest keys (ties in ascending index), sorted, with
// their logprobs lp(i), into the row's top lists.
template <typename KeyAt, typename Logprob>
__device__ void write_top(const Row& r, int k, int low_shift, const KeyAt& key_at,
                          const Logprob& lp, int32_t* top_tokens, float* top_logprobs, Shared& s) {
  const Cut cut = top_k_cut(r, k, low_shift, key_at, s);
  if (threadIdx.x == 0) s.gathered = 0;
  __syncthreads();
  for (int i = r.begin; i < r.end; ++i) {
    const uint32_t key = key_at(i);
    if (!cut.keeps(key, i)) continue;
    const int slot = atomicAdd(&s.gathered, 1);  // an order sorted below
    if (slot < kMaxTopLogprobs) {
      s.gather_key[slot] = key;
      s.gather_index[slot] = i;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = min(min(s.gathered, k), kMaxTopLogprobs);
    for (int j = 1; j < n; ++j)  // insertion sort: key desc, index asc
      for (int m = j; m > 0; --m) {
        const bool before =
            s.gather_key[m] > s.gather_key[m - 1] ||
            (s.gather_key[m] == s.gather_key[m - 1] && s.gather_index[m] < s.gather_index[m - 1]);
        if (!before) break;
        const uint32_t kk = s.gather_key[m];
        s.gather_key[m] = s.gather_key[m - 1];
        s.gather_key[m - 1] = kk;
        const int ii = s.gather_index[m];
        s.gather_index[m] = s.gather_index[m - 1];
        s.gather_index[m - 1] = ii;
      }
    for (int j = 0; j < n; ++j) {
      top_tokens[j] = s.gather_index[j];
      top_logprobs[j] = lp(s.gather_index[j]);
    }
  }
  __syncthreads();
}

// ---- the kernel ----------------------------------------------------------------

// grid (R), block (kThreads): out[row] by SamplingPlan's rule, its count, its logprobs.
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  chained_prologue();
  __shared__ Shared s;
  const int64_t row = blockIdx.x;
  const int V = a.vocab;
  const int t = int(threadIdx.x);
  Row r;
  r.raw = static_cast<const uint16_t*>(a.logits) + row * V;
  r.x = a.processed + row * V;
  r.vocab = V;
  const int chunk = (V + kThreads - 1) / kThreads;
  r.begin = min(V, t * chunk);
  r.end = min(V, r.begin + chunk);
  const int want = a.logprob ? a.logprobs[row] : -1;  // logprobs: k, or -1
  const int kind = want >= 0 ? a.logprob_kind[row] : 0;
  int count_row = a.counts ? a.count_row[row] : -1;
  if (count_row >= a.count_rows) count_row = -1;
  int32_t* counts = count_row >= 0 ? a.counts + int64_t(count_row) * V : nullptr;

  // 1. The logits under the mask, then the bias list (each token once per row:
  // one writer each).
  const int mask_at = a.mask_row ? a.mask_row[row] : -1;
  const uint32_t* mask =
      mask_at >= 0 && mask_at < a.mask_rows ? a.mask + int64_t(mask_at) * a.mask_words : nullptr;
  ArgMax raw_max{-INFINITY, INT_MAX};
  MaxSum raw_sum{-INFINITY, 0.0f};
  for (int i = t; i < V; i += kThreads) {
    const float v = bf16_logit(r.raw[i]);
    r.x[i] = mask && ((mask[i >> 5] >> (i & 31)) & 1u) == 0u ? -INFINITY : v;
    if (want >= 0 && kind == 0) {
      add(raw_max, v, i);
      add(raw_sum, v);
    }
  }
  if (want >= 0 && kind == 0) {
    raw_max = broadcast(ArgMaxReduce(s.cub.argmax).Reduce(raw_max, ArgMaxOp()), s.max);
    raw_sum = broadcast(MaxSumReduce(s.cub.maxsum).Reduce(raw_sum, MaxSumOp()), s.maxsum);
  }
  __syncthreads();
  bool finite_bias = false;
  for (int j = a.bias_indptr[row] + t; j < a.bias_indptr[row + 1]; j += kThreads) {
    const int token = a.bias_token[j];
    const float v = a.bias_value[j];
    if (token >= 0 && token < V) r.x[token] = __fadd_rn(r.x[token], v);
    finite_bias = finite_bias || v != -INFINITY;
  }
  r.exact16 = !__syncthreads_or(finite_bias) && !counts;

  // 2. Penalties (f32, as the cpu backend rounds them); the max; Σ exp for
  // processed greedy logprobs.
  const float repetition = a.repetition[row], frequency = a.frequency[row],
              presence = a.presence[row];
  ArgMax max{-INFINITY, INT_MAX};
  MaxSum sum{-INFINITY, 0.0f};
  for (int i = t; i < V; i += kThreads) {
    float v = r.x[i];
    if (counts) {
      const int32_t e = counts[i];
      const int n = e >> 1;
      if ((e & 1) || n > 0) v = v > 0.0f ? __fdiv_rn(v, repetition) : __fmul_rn(v, repetition);
      if (n > 0) v = __fsub_rn(v, __fadd_rn(__fmul_rn(frequency, float(n)), presence));
      r.x[i] = v;
    }
    add(max, v, i);
    if (want >= 0 && kind == 1) add(sum, v);
  }
  max = broadcast(ArgMaxReduce(s.cub.argmax).Reduce(max, ArgMaxOp()), s.max);
  if (want >= 0 && kind == 1)
    sum = broadcast(MaxSumReduce(s.cub.maxsum).Reduce(sum, MaxSumOp()), s.maxsum);
  __syncthreads();

  // 3-6. The cuts and the draw.
  const float temperature = a.temperature[row];
  const bool sampled = temperature > 0.0f && isfinite(max.value);
  const Weight weight(max.value, sampled ? temperature : 1.0f);
  const float min_p = a.min_p[row];
  const int top_k = a.top_k[row];
  const bool typical_on = sampled && top_k != 1 && a.typical_p[row] < 1.0f;
  Cut topk, topp, typical;
  float mu = 0.0f;  // typical-p: Σ w log2 w / Σ w over the top-p set
  // Candidates: finite x with w ≥ min_p (min_p keeps a prefix of the order).
  auto candidate = [&](float v) { return v != -INFINITY && !(min_p > 0.0f && weight(v) < min_p); };
  auto in_topp = [&](int i) {
    const float v = r.x[i];
    if (!candidate(v)) return false;
    const uint32_t k = r.key(v);
    return topk.keeps(k, i) && topp.keeps(k, i);
  };
  auto typical_key = [&](int i) -> uint32_t {  // ascending s = |log2 w − μ| as descending keys
    if (!in_topp(i)) return 0u;
    return ~__float_as_uint(fabsf(weight.log2w(r.x[i]) - mu));
  };
  auto kept = [&](int i) {
    return in_topp(i) && (!typical_on || typical.keeps(typical_key(i), i));
  };
  auto mass = [&](int i) { return weight(r.x[i]); };
  int token = max.index;
  float total = 1.0f;
  if (sampled) {
    const int k = top_k;
    if (k == 1) {
      topk = {r.key(max.value), max.index};  // the first max alone
    } else if (k > 0 && k < V) {
      topk = top_k_cut(
          r, k, r.low_shift(),
          [&](int i) {
            const float v = r.x[i];
            return candidate(v) ? r.key(v) : 0u;
          },
          s);
    }
    const float top_p = a.top_p[row];
    if (top_p < 1.0f && k != 1) {
      auto key_at = [&](int i) {
        const float v = r.x[i];
        if (!candidate(v)) return 0u;
        const uint32_t key = r.key(v);
        return topk.keeps(key, i) ? key : 0u;
      };
      topp = mass_cut(r, r.low_shift(), top_p, /*refine_ties=*/true, key_at, mass, s);
    }
    if (typical_on) {
      Sum2 m{0.0f, 0.0f};  // Σ w, Σ w log2 w
      for (int i = r.begin; i < r.end; ++i)
        if (in_topp(i)) {
          const float l = weight.log2w(r.x[i]);
          const float w = exp2f(l);
          m.a += w;
          m.b += w * l;
        }
      m = broadcast(Sum2Reduce(s.cub.sum2).Reduce(m, Sum2Op()), s.sum2);
      mu = m.b / m.a;
      typical = mass_cut(r, 0, a.typical_p[row], /*refine_ties=*/false, typical_key, mass, s);
    }
    const Walked w = walk_kept(r, a.uniform[row], kept, mass, s);
    token = w.token >= 0 ? w.token : max.index;
    total = w.total;
  }
  if (t == 0) {
    a.out[row] = token;
    if (counts) counts[token] += 2;
  }

  // 7. Logprobs.
  if (want < 0) return;
  const float log_raw = logf(raw_sum.sum), log_sum = logf(sum.sum), log_total = logf(total);
  auto logprob = [&](int i) -> float {
    if (kind == 0) {  // raw: log_softmax of the logits
      if (!isfinite(raw_max.value)) return i == raw_max.index ? 0.0f : -INFINITY;
      return (bf16_logit(r.raw[i]) - raw_max.value) - log_raw;
    }
    if (!sampled) {  // processed, greedy: log_softmax of x
      if (!isfinite(max.value)) return i == max.index ? 0.0f : -INFINITY;
      return (r.x[i] - max.value) - log_sum;
    }
    return kept(i) ? (r.x[i] - max.value) / temperature - log_total : -INFINITY;
  };
  const int target = a.target[row] >= 0 ? a.target[row] : token;
  if (t == 0) a.logprob[row] = logprob(target);
  const int k = min(min(want, V), a.width);
  if (k <= 0) return;
  int32_t* top_tokens = a.top_tokens + row * a.width;
  float* top_logprobs = a.top_logprobs + row * a.width;
  if (kind == 0) {
    write_top(
        r, k, 16, [&](int i) { return key16(bf16_logit(r.raw[i])); }, logprob, top_tokens,
        top_logprobs, s);
  } else if (!sampled) {
    write_top(
        r, k, r.low_shift(), [&](int i) { return r.key(r.x[i]); }, logprob, top_tokens,
        top_logprobs, s);
  } else {
    write_top(
        r, k, r.low_shift(), [&](int i) { return kept(i) ? r.key(r.x[i]) : 0u; }, logprob,
        top_tokens, top_logprobs, s);
  }
}

// One block: the row's counts from a token list.
__global__ void __launch_bounds__(kThreads)
    reset_counts_kernel(int32_t* row, int vocab, const int32_t* tokens, int64_t n,
                        int64_t prompt_len) {
  for (int i = int(threadIdx.x); i < vocab; i += kThreads) row[i] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const int32_t token = tokens[i];
    if (token < 0 || token >= vocab) continue;
    if (i < prompt_len)
      atomicOr(&row[token], 1);
    else
      atomicAdd(&row[token], 2);
  }
}

}  // namespace

void launch_sample(const SampleArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  launch_chained(sample_kernel, dim3(unsigned(a.rows)), dim3(kThreads), 0, stream, a);
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_reset_token_counts(int32_t* counts, int vocab, int64_t row, const int32_t* tokens,
                               int64_t n, int64_t prompt_len, cudaStream_t stream) {
  reset_counts_kernel<<<1, kThreads, 0, stream>>>(counts + row * vocab, vocab, tokens, n,
                                                  prompt_len);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
