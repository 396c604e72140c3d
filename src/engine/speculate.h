// Speculative decoding with n-gram (prompt lookup) drafts: the host's part.
// A sequence's drafted tokens d_0 .. d_{k-1} run as k + 1 query rows after
// its last token (one row group, the same paged attention and LoRA path as a
// prompt chunk); row j is sampled by the ordinary sampling rule with the
// request's row-j parameters and its generator's j-th next draw, giving y_j.
// The sequence keeps y_0 .. y_a where a is the first j with y_j != d_j (a = k
// when every draft matches): the a accepted drafts and one more token.
//
// For a deterministic draft (q one-hot on d_j) this is the speculative-sampling
// rule (Leviathan et al., Chen et al.): y_j ~ p_j equals d_j with probability
// p_j(d_j) (accept), and given y_j != d_j it is distributed as p_j with d_j
// removed and renormalised, i.e. (p_j - q_j)+ normalised (the residual draw).
// Greedy rows are the case p_j = one-hot on the argmax. Row j's draw being
// the generator's j-th next one, the kept tokens are those the sequence gets
// without speculation, draw for draw: the generator advances by the tokens
// kept, not by the rows.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace philora::engine {

// Prompt lookup (vLLM's ngram proposer): for n = max_n down to min_n, the
// last earlier occurrence of the trailing n tokens of `tokens` (prompt +
// output) that has a token after it; the drafts are the up to `max_drafts`
// tokens that followed it. Empty when no n-gram recurs.
std::vector<int32_t> ngram_drafts(std::span<const int32_t> tokens, int64_t max_drafts,
                                  int64_t max_n = 3, int64_t min_n = 1);

// How many drafts the sampled rows accept: the first j with sampled[j] !=
// drafts[j] (drafts.size() when all match). sampled has drafts.size() + 1 rows.
int64_t accepted_drafts(std::span<const int32_t> drafts, std::span<const int32_t> sampled);

// How many tokens a sequence drafts: as many as pay for themselves. A chain
// of drafts is accepted draft by draft, each given the ones before it, at a
// rate α per draft that the sequence's own verifications estimate; k drafts
// then yield 1 + α + α² + … + α^k tokens a step on average, for a step that
// costs 1 + row_cost · k of a plain one (row_cost: what one more row of a
// sequence costs, relative to the step: a few percent on a GPU at small batch,
// where a step reads the weights once whatever its rows; far more on a CPU).
// DraftStats keeps the estimate: decayed counts (kDraftDecay a verification)
// of accepted drafts and of rejections (verifications that kept fewer drafts
// than they checked), α = (accepted + 1) / (accepted + rejected + 2).
inline constexpr double kDraftDecay = 0.8;
// Row costs measured on the embedded model at batch 1 (bench/RESULTS.md,
// issue 20): an H100 step with k + 1 rows costs ~1 + 0.03 k of a plain one;
// a 2-core CPU step ~1 + 0.3 k.
inline constexpr double kGpuRowCost = 0.03, kCpuRowCost = 0.3;

struct DraftStats {
  double accepted = 0.0;
  double rejected = 0.0;
  // One verification: `drafted` drafts checked, the first `accepted` kept.
  void record(int64_t drafted, int64_t accepted);
  double rate() const { return (accepted + 1.0) / (accepted + rejected + 2.0); }
};

// The k in 1..max (max ≥ 1) with the most tokens per unit of step cost at
// rate α and `row_cost`; 0 when max ≤ 0.
int64_t draft_length(double rate, double row_cost, int64_t max);

}  // namespace philora::engine
