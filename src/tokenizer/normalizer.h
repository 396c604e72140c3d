// Normalizers of tokenizer.json ("normalizer"): rewrite each piece of input text that is not an
// added token before pre-tokenization. Supported: Sequence, Prepend, Replace, Strip. Anything
// else is refused at load with a message naming it.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

// Text being normalized. `prefix_chars` counts the characters that normalizers inserted in front
// of the original text (HF aligns them with the first original character, which matters for
// Metaspace's prepend_scheme "first").
struct NormalizedText {
  std::string text;
  size_t prefix_chars = 0;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedText& s) const = 0;
};

// Builds the normalizer described by `j` (a tokenizer.json "normalizer" object; null gives
// nullptr).
Expected<std::unique_ptr<Normalizer>> make_normalizer(const nlohmann::json& j);

}  // namespace philora::tokenizer
