// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): cut normalized text into the pieces the
// model encodes one by one. Supported: Sequence, Split, ByteLevel, Metaspace, Digits.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

// One piece of pre-tokenized text.
struct Piece {
  std::string_view text;
  // The piece starts at byte 0 of the original input (HF: offsets_original().0 == 0). Characters
  // that normalizers inserted in front count as being at the start.
  bool at_start = false;
  size_t prefix_bytes = 0;  // bytes of normalizer-inserted text at the front of this piece
};

// The pieces of one input segment, plus storage for text that pre-tokenizers rewrote.
struct PreTokenized {
  std::vector<Piece> pieces;
  std::deque<std::string> arena;  // stable storage that pieces may point into
  // The pieces still hold raw bytes that a ByteLevel step maps through the GPT-2 alphabet;
  // BPE does that mapping on the fly instead of materializing it.
  bool raw_bytes = false;

  std::string_view keep(std::string s) {
    arena.push_back(std::move(s));
    return arena.back();
  }
  // Rewrites raw-byte pieces into alphabet characters (when a later step needs real text).
  void materialize_byte_level();
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(PreTokenized& p) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `piece` at `matches` (sorted, non-overlapping byte ranges) like HF's
// NormalizedString::split; empty results are dropped. Exposed for tests.
void split_piece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out);

// Builds the pre-tokenizer described by `j` (null gives nullptr).
Expected<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const nlohmann::json& j);

}  // namespace philora::tokenizer
