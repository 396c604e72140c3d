// The op interface. The model calls these ops and nothing else; each backend
// (cpu/ is the spec, cuda/ the product) implements all of them. Ops take plain
// descriptors (tensors of indices built by the planner) and own no memory
// beyond the tensors they return.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace philora {

// Where K and V of one layer live: a pool of fixed-size pages, each holding
// its tokens head by head (FlashInfer's HND layout), so that one head's keys
// in a page are one contiguous run of page_size · head_dim elements.
struct KvLayer {
  Tensor k;  // (num_pages, n_kv_heads, page_size, head_dim)
  Tensor v;  // (num_pages, n_kv_heads, page_size, head_dim)
  int64_t page_size() const { return k.dim(2); }
};

// Element offset of (loc, kv head) in a K or V pool; loc = page · page_size + offset.
inline int64_t kv_offset(int64_t loc, int64_t head, int64_t n_kv_heads, int64_t page_size,
                         int64_t head_dim) {
  return ((loc / page_size * n_kv_heads + head) * page_size + loc % page_size) * head_dim;
}

// Rotary embedding of one model. Angles are computed as HF does: in f32,
// angle = f32(position) * inv_freq[i]; cos/sin are then scaled by
// `attention_factor` (LongRoPE). Tokens with rope_long = 1 use `inv_freq_long`.
struct RopeParams {
  Tensor inv_freq_short;  // [rotary_dim / 2] f32
  Tensor inv_freq_long;   // [rotary_dim / 2] f32 (== short when there is no LongRoPE)
  float attention_factor = 1.0f;
  int64_t rotary_dim = 0;  // first rotary_dim dims of each head rotate (rotate-half); the rest pass
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
};

// Per-token data of one step, on the backend's device. T = tokens this step.
struct TokenPlan {
  Tensor token_ids;  // [T] i32
  Tensor positions;  // [T] i32, position of each token in its sequence
  Tensor kv_locs;    // [T] i32, KV location (page * page_size + offset) each token writes
  Tensor rope_long;  // [T] i32, 1 when the token's sequence uses LongRoPE long factors
};

// Paged attention over a batch of sequences (FlashInfer's layout). Query rows of
// sequence s are q_indptr[s] .. q_indptr[s+1]; its KV pages are
// kv_indices[kv_indptr[s] .. kv_indptr[s+1]]; its last page holds
// kv_last_page_len[s] tokens. Query row t (position p) attends to the cached keys
// at positions j with  max(0, p - window + 1) ≤ j ≤ p  (window 0 = unlimited).
struct AttentionPlan {
  Tensor q_indptr;          // [S + 1] i32
  Tensor kv_indptr;         // [S + 1] i32
  Tensor kv_indices;        // [total pages] i32
  Tensor kv_last_page_len;  // [S] i32
  Tensor positions;         // [T] i32 (same as TokenPlan::positions)
  int64_t num_seqs = 0;
  int64_t max_q_len = 0;  // host-side bounds for launch shapes
  int64_t max_kv_len = 0;
  int64_t window = 0;  // sliding window W, 0 = none
  float scale = 1.0f;  // softmax scale, 1/sqrt(head_dim)
};

// The adapters resident in device slots, seen from one (layer, target) module.
// Slot i's pair is A_i: (ranks[i], in), B_i: (out, ranks[i]), both stored in
// `dtype`; ranks[i] = 0 means that adapter does not touch this module.
struct LoraModuleTable {
  Tensor a_ptrs;  // [num_slots] i64: device address of A_i (0 when rank 0)
  Tensor b_ptrs;  // [num_slots] i64: device address of B_i
  Tensor b_ld;    // [num_slots] i32: elements between B_i's rows (B_i inside a wide weight);
                  // empty: ranks[i] (B_i a matrix of its own)
  Tensor ranks;   // [num_slots] i32
  Tensor scales;  // [num_slots] f32
  DType dtype = DType::f32;
  int64_t num_slots = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t max_rank = 0;  // over all slots
  // LoRA columns (decode's one-matmul form): this module's base weight is
  // (out, in + columns) and holds slot i's B_i in its columns
  // in + col_offsets[i] .. + ranks[i]; empty when the module has none.
  Tensor col_offsets;  // [num_slots] i32, -1 for a slot without columns
  int64_t columns = 0;
};

// The modules of Phi3ForCausalLM that LoRA can target. The four per-layer
// targets come first so that they index a per-layer array.
enum class LoraTarget : uint8_t { qkv = 0, o = 1, gate_up = 2, down = 3, lm_head = 4 };
inline constexpr int kLoraLayerTargets = 4;

// The resident adapters as the forward reads them: one LoraModuleTable per
// target module (layer l's at kLoraLayerTargets · l + target, lm_head's
// last), null where no adapter touches the module. Whoever keeps the
// adapters (lora::AdapterSlots) keeps this at a fixed address and rewrites
// it in place, so that recorded step graphs stay valid.
struct LoraTables {
  std::vector<const LoraModuleTable*> modules;  // [kLoraLayerTargets · layers + 1]
  // Tensor parallelism: ranks 1 .. N-1's own tables (their adapters split as
  // their weights are), [N - 1]; empty with one rank.
  std::vector<const LoraTables*> peers;
  const LoraModuleTable* table(int64_t layer, LoraTarget t) const {
    return t == LoraTarget::lm_head ? modules.back()
                                    : modules[size_t(layer * kLoraLayerTargets + int64_t(t))];
  }
};

// Which adapter slot each token uses this step (-1 = none). Both forms are
// given: contiguous segments (prefill-friendly) and per-token slots (decode).
struct LoraBatch {
  bool active = false;  // host: false when no token uses an adapter -> no LoRA work at all
  Tensor seg_indptr;    // [G + 1] i32: segment g covers tokens seg_indptr[g] .. seg_indptr[g+1]
  Tensor seg_slot;      // [G] i32
  Tensor token_slot;    // [T] i32
  int64_t num_segments = 0;
  int64_t max_rank = 0;  // host: max rank among the slots used this step
  // host: > 0 when every token's adapter has LoRA columns within the first
  // `lora_columns` (a step of few tokens): modules with columns then apply
  // LoRA as lora_shrink_columns followed by one matmul over the wide weight.
  int64_t lora_columns = 0;
};

// The elementwise op that makes a matmul's x from another tensor: none (x is
// the tensor), rms_norm(src, weight, eps), or silu_mul(src). A backend may run
// it inside the matmul (or the LoRA shrink) that reads x instead of as an op
// of its own (one kernel and its launch fewer a use at decode); the values are
// the op's, as if it ran alone.
struct Prologue {
  enum class Kind : uint8_t { none, rms_norm, silu_mul };
  Kind kind = Kind::none;
  Tensor norm_weight;  // rms_norm's [in]
  float eps = 0.0f;    // rms_norm's
  static Prologue rms_norm(Tensor weight, float eps) { return {Kind::rms_norm, std::move(weight), eps}; }
  static Prologue silu_mul() { return {Kind::silu_mul, Tensor(), 0.0f}; }
};

// The most alternatives a row may ask logprobs for (OpenAI's top_logprobs).
inline constexpr int64_t kMaxLogprobs = 20;

// Token selection and logprobs for each row r of a (R, vocab) logits tensor, all
// on the backend so that only token ids (and the logprobs asked for) travel to
// the host. Row r, in this order (vLLM V1's order; typical-p, which vLLM lacks,
// last, where HF and LoRAX apply it):
//   1. x = the row's logits in f32, NaN counted as -inf. (Raw logprobs read x here.)
//   2. the constraint's mask (structured output), then logit bias and bans: when
//      mask_row[r] = m ≥ 0, x[t] = -inf for every token t whose bit t % 32 of
//      word mask[m, t / 32] is clear; then x[t] += v for each entry (t, v) of the
//      row's sparse list; a ban is v = -inf. A token appears at most once in a
//      row's list. (Bias, bans and the penalties keep -inf at -inf, so the mask
//      removes the same tokens wherever it stands before step 4.)
//   3. penalties, when count_row[r] = c ≥ 0, from n = counts[c, t] >> 1 (times t
//      was generated) and p = counts[c, t] & 1 (t is in the prompt), in f32:
//        repetition (HF / TGI, prompt + output): when p or n > 0,
//          x[t] = x[t] > 0 ? x[t] / repetition : x[t] · repetition;
//        frequency and presence (OpenAI, output only): when n > 0,
//          x[t] -= frequency · n + presence   (f32: x − (frequency · n + presence)).
//      Rows with a count row have distinct ones.
//   4. greedy (temperature ≤ 0, or no finite max of x): the first index of the max.
//      Otherwise w_t = exp((x_t − max x) / temperature), and the candidates, the
//      tokens of finite x in (x desc, index asc) order, are cut; each cut works
//      on what the ones before it kept:
//        min_p     keep w_t ≥ min_p (vLLM: p_t ≥ min_p · p_max); 0: no cut
//        top_k     the first top_k (0 or ≥ vocab: no cut)
//        top_p     the shortest prefix whose mass reaches top_p · Σ w (≥ 1: no cut)
//        typical_p (HF's TypicalLogitsWarper; ≥ 1: no cut) with p_t = w_t / Σ w and
//                  H = −Σ p log p, s_t = |log p_t + H|: keep s_t ≤ s*, s* the smallest
//                  s whose {s_t ≤ s} holds a mass ≥ typical_p · Σ w (all, when
//                  rounding leaves none)
//      The kept tokens are then walked in vocabulary order and the first whose
//      running sum of w exceeds uniform[r] · Σ_kept w is chosen (the last kept
//      token if rounding leaves none).
//   5. counts[c, chosen] += 2 when c ≥ 0.
//   6. logprobs, when logprobs[r] = k ≥ 0 (k ≤ plan.logprobs_width): the logprob
//      of the target (target[r] ≥ 0, else the chosen token) and the k (at most
//      vocab) tokens of the highest logprob (ties: ascending index), as
//        raw (logprob_kind 0): log_softmax of step 1's x (the model's own), or
//        processed (1): log of the probability the token was drawn with,
//          w_t / Σ_kept w, and -inf for tokens a cut removed; for a greedy row,
//          log_softmax of step 3's x.
//      A log_softmax over a row with no finite max gives 0 to its first max and
//      -inf to every other token.
struct SamplingPlan {
  Tensor temperature;         // [R] f32, ≤ 0: greedy
  Tensor top_k;               // [R] i32
  Tensor top_p;               // [R] f32 in (0, 1]
  Tensor min_p;               // [R] f32 in [0, 1]
  Tensor typical_p;           // [R] f32 in (0, 1]
  Tensor uniform;             // [R] f32 in [0, 1): the row's random draw, made by the host
  Tensor repetition_penalty;  // [R] f32 > 0
  Tensor frequency_penalty;   // [R] f32
  Tensor presence_penalty;    // [R] f32
  Tensor count_row;           // [R] i32: the row's row of `counts`, -1 = none
  Tensor bias_indptr;         // [R + 1] i32: row r's entries are bias_indptr[r] .. [r + 1]
  Tensor bias_token;          // [≥ N] i32, N = bias_indptr[R]
  Tensor bias_value;          // [≥ N] f32, -inf = a ban
  Tensor logprobs;            // [R] i32: -1 = none, else k ≤ logprobs_width
  Tensor logprob_kind;        // [R] i32: 0 raw, 1 processed
  Tensor target;              // [R] i32: -1 = the chosen token
  // Allowed-token bitmasks (structured output); both empty: no row has one.
  Tensor mask_row;  // [R] i32: row r's mask is mask[mask_row[r]], -1 = none
  Tensor mask;      // (M, ceil(vocab / 32)) i32 words: bit t % 32 of word t / 32 = t allowed
  Tensor counts;              // (rows, vocab) i32, updated in place; may be empty when no
                              // row has a count row
  // host: -1 = no row asks for logprobs; else K (0 .. kMaxLogprobs), the
  // columns of SampleResult's top lists, and every logprobs[r] ≤ K.
  int64_t logprobs_width = -1;
};

// What Backend::sample returns; the logprob tensors are empty when
// plan.logprobs_width is -1.
struct SampleResult {
  Tensor tokens;        // [R] i32
  Tensor logprob;       // [R] f32: the target's logprob (rows without logprobs: unspecified)
  Tensor top_tokens;    // (R, K) i32: the top logprobs[r] of row r, then unspecified
  Tensor top_logprobs;  // (R, K) f32
};

// A recorded sequence of ops (a CUDA graph) that replays on the same tensors.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The name and what it runs on, for people: "cuda (NVIDIA H100 80GB HBM3)".
  virtual std::string description() const { return name(); }
  // dtype of activations and of weights as stored on this backend.
  virtual DType compute_dtype() const = 0;

  // ---- memory ------------------------------------------------------------
  virtual Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) = 0;
  // A weight or constant from host memory, converted to `dtype`. May borrow
  // the host memory when no conversion or copy is needed.
  virtual Tensor upload(const Tensor& host, DType dtype) = 0;
  // `n` elements of host memory that upload() copies from fastest and without
  // making the caller wait (CUDA: page-locked; such a copy keeps the tensor's
  // storage alive until it is done), for data uploaded again and again (the
  // adapters' host tier). Plain host memory by default. Any thread may call it.
  virtual Tensor pinned_host(DType dtype, int64_t n);
  // Any tensor of this backend, widened to f32, in host memory.
  virtual Tensor to_host_f32(const Tensor& t) = 0;
  // Fills a backend tensor from host i32 values (plans).
  virtual Tensor upload_i32(const std::vector<int32_t>& values) = 0;
  virtual Tensor upload_i64(const std::vector<int64_t>& values) = 0;
  virtual Tensor upload_f32(const std::vector<float>& values) = 0;
  // Queues a copy of `bytes` host bytes into the existing backend tensor `dst`
  // (ordered with the ops around it; `src` may be reused when this returns).
  virtual void upload_into(Tensor& dst, const void* src, size_t bytes) = 0;
  // An i32 backend tensor in host memory (waits for the work queued before).
  virtual std::vector<int32_t> download_i32(const Tensor& t) = 0;
  virtual void synchronize() = 0;
  // Hands memory the backend keeps for reuse (freed tensors) back to the
  // device, e.g. after weights were replaced by wider copies. No-op by default.
  virtual void release_cached_memory() {}
  // The memory this backend allocates from, now: the device's free and total
  // bytes (CUDA), or the host's available and total RAM (CPU). Sizes the KV cache.
  struct MemoryInfo {
    int64_t free_bytes = 0;
    int64_t total_bytes = 0;
  };
  virtual Expected<MemoryInfo> memory_info() const = 0;
  // Uniform values in [mean - half_width, mean + half_width], in the compute
  // dtype; element i depends only on (seed, i) (random_uniform_value), so every
  // backend makes the same tensor. For benchmarks and tests.
  virtual Tensor random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                                float half_width) = 0;

  // ---- ops ---------------------------------------------------------------
  // out[t, :] = table[ids[t], :]                         -> (T, hidden)
  virtual Tensor embedding(const Tensor& ids, const Tensor& table) = 0;
  // w * x / sqrt(mean(x²) + eps), per row, in f32         -> (T, hidden)
  virtual Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) = 0;
  // r = h + residual; returns (rms_norm(r), r). An empty residual means r = h.
  virtual std::pair<Tensor, Tensor> add_rms_norm(const Tensor& h, const Tensor& residual,
                                                 const Tensor& w, float eps) = 0;
  // y = x · w[:, :in]ᵀ ; x (T, in), w (out, in') with in' ≥ in: the leading
  // `in` columns of each row of w (a weight with LoRA columns)  -> (T, out)
  virtual Tensor matmul(const Tensor& x, const Tensor& w) = 0;
  // y += x · w[:, :in]ᵀ ; y (T, out) in place
  virtual void matmul_add(const Tensor& x, const Tensor& w, Tensor& y) = 0;
  // The same two with x = the prologue applied to src (src itself for none):
  // by default the prologue's op and then the matmul; a backend overrides
  // them where it fuses the op into the matmul.
  Tensor apply_prologue(const Tensor& src, const Prologue& p);
  virtual Tensor fused_matmul(const Tensor& src, const Prologue& p, const Tensor& w);
  virtual void fused_matmul_add(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y);
  // dst[:, col .. col + src.cols()) = src (rows equal), or 0 for `count`
  // columns when src is empty: placing B matrices into a weight's LoRA columns.
  virtual void write_columns(Tensor& dst, int64_t col, const Tensor& src, int64_t count = 0) = 0;
  // Several at once: each write puts its src (rows, r) into dst's columns
  // col .. col + r and zeros into col + r .. col + width (width ≥ r; an empty
  // src: zeros only). An adapter's B into every module's LoRA columns in one
  // launch on CUDA; by default one write_columns per piece.
  struct ColumnWrite {
    Tensor dst;  // a weight (its data is written; the Tensor is a handle)
    int64_t col = 0;
    Tensor src;
    int64_t width = 0;
  };
  virtual void write_columns_batch(const std::vector<ColumnWrite>& writes);
  // Rotates q and k of qkv (T, (H + 2 Hkv) · d) in place and writes k, v into
  // the cache at `tokens.kv_locs`.
  virtual void rope_and_cache(Tensor& qkv, const TokenPlan& tokens, const RopeParams& rope,
                              KvLayer& kv) = 0;
  // Causal (optionally sliding-window) attention of the q part of qkv over the
  // paged cache. GQA: query head h reads kv head h / (H / Hkv).  -> (T, H · d)
  virtual Tensor attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                           const RopeParams& shape) = 0;
  // gate_up (T, 2I) = [gate | up]  ->  silu(gate) * up   (T, I)
  virtual Tensor silu_mul(const Tensor& gate_up) = 0;
  // rows of x at `rows` (i32, host-built)                 -> (R, cols)
  virtual Tensor gather_rows(const Tensor& x, const Tensor& rows) = 0;
  // x + silu(h + bias), a Medusa head's residual block after its linear:
  // h, x (R, n) in the compute dtype, bias [n]             -> (R, n)
  virtual Tensor bias_silu_residual(const Tensor& h, const Tensor& bias, const Tensor& x) = 0;
  // Each row's largest value's column, the first one on ties: x (R, n) -> [R] i32
  virtual Tensor argmax_rows(const Tensor& x) = 0;

  // ---- LoRA --------------------------------------------------------------
  // shrink: xa[t, :r] = A_{slot(t)} x[t]      (T, batch.max_rank) f32; rows of
  //         tokens without an adapter (or rank 0) are left unspecified.
  virtual Tensor lora_shrink(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) = 0;
  // expand: y[t, col_offset + j] += scale_{slot(t)} · (B_{slot(t)} xa[t, :r])[j]
  //         for j < m.out_features, only for tokens with an adapter of rank > 0.
  virtual void lora_expand(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch,
                           Tensor& y, int64_t col_offset) = 0;
  // delta: y[t, j] = scale_{slot(t)} · (B_{slot(t)} xa[t, :r])[j]  (T, m.out_features), and 0
  //        for tokens without an adapter (or rank 0): lora_expand into zeros.
  virtual Tensor lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) = 0;
  // shrink into LoRA columns: X (T, in + batch.lora_columns) in the compute
  // dtype, X[t, :in] = x[t], X[t, in + col_offsets[s] + j] = scale_s · (A_s x[t])[j]
  // for j < r_s (s = slot(t), r_s > 0), every other column 0; then
  // matmul(X, w) over the wide weight is W x + scale · B (A x) in one product.
  virtual Tensor lora_shrink_columns(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) = 0;
  // Whether lora_shrink_columns takes modules of `in_features` inputs (a model
  // whose targets it does not take keeps LoRA in the kernels instead).
  virtual bool lora_columns_supported(int64_t in_features) const { return in_features > 0; }

  // ---- token selection -----------------------------------------------------
  // One token id per row of logits (R, vocab) by SamplingPlan's rule, and the
  // logprobs it asks for.
  virtual SampleResult sample(const Tensor& logits, const SamplingPlan& plan) = 0;
  // Token counts for the penalties: row `row` of counts (rows, vocab) i32
  // becomes the counts of `tokens` [n] i32, of which the first prompt_len are
  // the prompt: counts[row, t] = 2 · (times t is among the rest) + (1 if t is
  // in the prompt). The other rows are left alone.
  virtual void reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                                  int64_t prompt_len) = 0;

  // ---- step graphs ---------------------------------------------------------
  // Runs `body` once as usual (a warm-up: algorithm choices, lazy set-up), then
  // records the ops it issues into a graph. Tensors `body` allocates while being
  // recorded come from memory private to graphs, so a replay never touches
  // memory that ops outside graphs use; tensors it keeps (its outputs) stay
  // valid and are rewritten by every replay. Graphs replay one at a time, in
  // order with other ops. nullptr when the backend cannot record.
  virtual bool can_capture() const { return false; }
  virtual std::unique_ptr<StepGraph> capture(const std::function<void()>& body) {
    (void)body;
    return nullptr;
  }
};

// splitmix64 of (seed, i) mapped to [-1, 1): the value random_uniform draws.
inline float random_uniform_value(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(int64_t(z >> 40) - (int64_t(1) << 23)) * (1.0f / float(1 << 23));
}

// The backends compiled in, by name ("cpu", "cuda"). Returns an error naming the
// choices when the backend is unknown or not available on this machine.
// "cpu", "cuda", or "auto" (cuda when a CUDA device is usable, else cpu).
Expected<std::unique_ptr<Backend>> make_backend(const std::string& name);
std::vector<std::string> available_backends();

}  // namespace philora
