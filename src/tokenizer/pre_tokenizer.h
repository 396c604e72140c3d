// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): cut normalized text into the pieces the
// model encodes one by one. Supported: Sequence, Split, ByteLevel, Metaspace, Digits.
// Pieces stream through the steps one at a time (no list of all pieces of a long text is built).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
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
  size_t prefix_bytes = 0;  // bytes of inserted text at the front of this piece
  // The bytes still have to be mapped through the GPT-2 byte alphabet (a ByteLevel step ran);
  // BPE does that on the fly instead of materializing the mapped text.
  bool raw_bytes = false;
};

// A non-owning callable taking pieces (valid only during the call that receives it).
class PieceSink {
 public:
  template <typename F>
  PieceSink(F& f)
      : obj_(&f), call_([](void* o, const Piece& p) { (*static_cast<F*>(o))(p); }) {}  // NOLINT
  void operator()(const Piece& p) const { call_(obj_, p); }

 private:
  void* obj_;
  void (*call_)(void*, const Piece&);
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Cuts `piece` and hands every resulting non-empty piece, in order, to `sink`.
  virtual void pre_tokenize(const Piece& piece, const PieceSink& sink) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `piece` at `matches` (sorted, non-overlapping byte ranges) like HF's
// NormalizedString::split; empty results are dropped. Exposed for tests.
std::vector<Piece> split_piece(const Piece& piece,
                               const std::vector<std::pair<size_t, size_t>>& matches,
                               SplitBehavior behavior, bool invert);

// Builds the pre-tokenizer described by `j` (null gives nullptr).
Expected<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const nlohmann::json& j);

}  // namespace philora::tokenizer
