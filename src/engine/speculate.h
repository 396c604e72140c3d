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

// Prompt lookup with several candidates (tree speculation): ngram_drafts'
// chain first, then the continuations of the other earlier occurrences of the
// same trailing n-gram (latest first), then of shorter ones; each at most
// `max_drafts` tokens. One that is a prefix of a candidate taken would verify
// nothing new and is skipped; one that extends a candidate (cut short by the
// end of the tokens) replaces it. At most `max_paths` candidates, none when no
// n-gram recurs; with max_paths 1, ngram_drafts' chain.
std::vector<std::vector<int32_t>> ngram_draft_paths(std::span<const int32_t> tokens,
                                                    int64_t max_drafts, int64_t max_paths,
                                                    int64_t max_n = 3, int64_t min_n = 1);

// Medusa's candidate chains (tree speculation; Cai et al.'s tree, built per
// step): `chain` is the heads' greedy chain (k drafts, head i's at i), `top`
// and `logprob` every head's `width` likeliest tokens and their logprobs
// (head i's at i · width, likeliest first; at least k heads). The heads guess
// independently, so a chain's first j + 1 drafts all hold with probability
// the product of their heads' probabilities; the expected drafts a set of
// chains keeps is the sum of that over every distinct prefix. Starting from
// `chain`, each next chain is the one that adds the most to it among those
// that leave a chain taken at one depth j for another of head j's tokens and
// follow the greedy chain after it; at most `max_paths` chains, none that adds
// nothing.
std::vector<std::vector<int32_t>> medusa_draft_paths(std::span<const int32_t> chain,
                                                     std::span<const int32_t> top,
                                                     std::span<const float> logprob, int64_t width,
                                                     int64_t max_paths);

// Whether chain `whole` begins with `part` (verifying `whole` verifies `part`).
inline bool starts_with(std::span<const int32_t> whole, std::span<const int32_t> part) {
  return whole.size() >= part.size() && std::equal(part.begin(), part.end(), whole.begin());
}

// How many drafts the sampled rows accept: the first j with sampled[j] !=
// drafts[j] (drafts.size() when all match). sampled has drafts.size() + 1 rows.
int64_t accepted_drafts(std::span<const int32_t> drafts, std::span<const int32_t> sampled);

// Verification of several candidate chains at once (tree speculation; each
// chain p runs as its own row group of drafts[p].size() + 1 rows after the
// sequence's last token, sampled[p] its rows' tokens). Row j of every chain
// takes the generator's j-th next draw, and chains that agree on their first j
// drafts give row j the same context: the walk keeps, at each depth j, the
// chains whose first j drafts are the tokens kept so far, takes token y_j from
// the first of them (the lowest index), and goes on while one of them drafted
// y_j. The kept tokens y_0 .. y_a are so the ones a single chain would keep
// were it the right one: what the sequence gets without speculation.
struct PathAcceptance {
  int64_t path = 0;      // the chain whose K/V the sequence keeps (its first `accepted` drafts)
  int64_t accepted = 0;  // a: drafts kept
  std::vector<int32_t> row_path;  // [a + 1] the chain whose row j gave kept token j
};
PathAcceptance accept_paths(const std::vector<std::vector<int32_t>>& drafts,
                            const std::vector<std::span<const int32_t>>& sampled);

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

//
// Alternative chains (tree speculation) pay when the tokens they add beyond
// the first chain's, per verification, outweigh their rows: with T the first
// chain's expected tokens and C its step cost, alternatives of `rows` rows
// are verified when gain / T > row_cost · rows / C. The gain is estimated as
// the rate is, from decayed counts of the extra tokens alternatives won and of
// the verifications that had them, starting from kAltGainPrior tokens.
inline constexpr double kAltGainPrior = 0.5;

struct DraftStats {
  double accepted = 0.0;
  double rejected = 0.0;
  double alt_gained = 0.0;  // extra tokens alternative chains won (decayed)
  double alt_steps = 0.0;   // verifications with alternatives (decayed)
  // One verification: `drafted` drafts checked, the first `accepted` kept.
  void record(int64_t drafted, int64_t accepted);
  // One verification with alternative chains: they kept `gained` more tokens
  // than the first chain alone.
  void record_alternatives(int64_t gained);
  double rate() const { return (accepted + 1.0) / (accepted + rejected + 2.0); }
  double alt_gain() const { return (alt_gained + kAltGainPrior) / (alt_steps + 1.0); }
};

// Whether alternative chains of `alt_rows` rows pay beside a first chain of
// k drafts (above), at the sequence's rate and alternative gain.
bool alternatives_pay(const DraftStats& stats, double row_cost, int64_t k, int64_t alt_rows);

// The k in 1..max (max ≥ 1) with the most tokens per unit of step cost at
// rate α and `row_cost`; 0 when max ≤ 0.
int64_t draft_length(double rate, double row_cost, int64_t max);

}  // namespace philora::engine
