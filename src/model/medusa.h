// Medusa heads (Cai et al., 2024): small heads on the model's final hidden
// state that guess the tokens after the next one, drafts for speculative
// decoding. The layout is the one LoRAX and TGI load: a directory with
//   config.json                 {"medusa_num_heads": K, "medusa_num_layers": L, ...}
//   medusa_lm_head.safetensors  for head i < K and block j < L:
//                                 "i.j.linear.weight" (hidden, hidden)
//                                 "i.j.linear.bias"   (hidden)
//                               and either "i.L.weight" (vocab, hidden), the
//                               head's own output matrix (LoRAX's MedusaV1), or,
//                               with none of those, the model's lm_head
//                               (MedusaV2, L = 1).
// Head i on the hidden state h_t (after the model's final norm) of position t
// scores the token of position t + 2 + i:
//   x = h_t;  x = x + SiLU(W_ij x + b_ij) for j < L;  logits_i = out_i x.
// Tensor names may carry FasterDecoding's "medusa_head." prefix.
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "model/config.h"

namespace philora::model {

struct MedusaHead {
  std::vector<Tensor> weight;  // [L] (hidden, hidden)
  std::vector<Tensor> bias;    // [L] (hidden)
  Tensor out;                  // (vocab, hidden); empty: the model's lm_head
};

class MedusaHeads {
 public:
  // Reads DIR's config.json and medusa_lm_head.safetensors, checks every
  // tensor against `config` and uploads them in the backend's compute dtype.
  static Expected<MedusaHeads> load(const std::string& dir, const Phi3Config& config,
                                    Backend& backend);

  int64_t num_heads() const { return int64_t(heads_.size()); }
  int64_t num_layers() const { return heads_.empty() ? 0 : int64_t(heads_[0].weight.size()); }
  bool own_output() const { return !heads_.empty() && !heads_[0].out.empty(); }

  // Head i's logits (R, vocab) for hidden (R, hidden); lm_head: the model's.
  Tensor logits(Backend& ops, const Tensor& hidden, const Tensor& lm_head, int64_t i) const;
  // Every head's greedy token for every row: [R · K] host ids, row-major
  // (row r's head i at r · K + i).
  std::vector<int32_t> draft(Backend& ops, const Tensor& hidden, const Tensor& lm_head) const;
  // Every head's logits for every row, on the backend, (R · K, vocab) in
  // draft()'s order (row r's head i at r · K + i): a step's sample op takes
  // them as greedy rows beside its own (engine/step_runner), so its tokens and
  // the drafts come back in one download; the first max of row r · K + i is
  // draft()'s token.
  Tensor step_logits(Backend& ops, const Tensor& hidden, const Tensor& lm_head) const;

 private:
  // x after head i's blocks.
  Tensor blocks(Backend& ops, const Tensor& hidden, int64_t i) const;

  std::vector<MedusaHead> heads_;
};

}  // namespace philora::model
