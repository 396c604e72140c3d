// Decoders of tokenizer.json ("decoder"): turn the token strings of ids back into text.
// Supported: Sequence, ByteFallback, Fuse, Strip, Replace, ByteLevel, Metaspace.
// Each decoder rewrites the list of token strings (HF's decode_chain); the text is their
// concatenation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Rewrites one token string into the raw bytes it contributes in the middle of a text:
  // each step's per-token mapping (ByteLevel's alphabet, <0xNN>, Replace, Metaspace's "▁"
  // always a space) without the steps that only act on the whole text (Fuse, Strip, the
  // first-token rules) and without the final UTF-8 repair. Used by constrained decoding.
  virtual void token_bytes(std::string& token) const = 0;
};

// Builds the decoder described by `j` (null gives nullptr).
Expected<std::unique_ptr<Decoder>> make_decoder(const nlohmann::json& j);

}  // namespace philora::tokenizer
