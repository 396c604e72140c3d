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

// The next step's draft limit of a sequence that drafted `drafted` tokens and
// had `accepted` of them accepted: one more (up to `max`) when all were, else
// accepted + 1 (at least 1).
int64_t next_draft_limit(int64_t drafted, int64_t accepted, int64_t max);

}  // namespace philora::engine
