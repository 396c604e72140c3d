// Post-processors of tokenizer.json ("post_processor"): add the special tokens around an encoded
// sequence when add_special_tokens is set. Supported: TemplateProcessing, ByteLevel (no effect on
// ids), RobertaProcessing, BertProcessing, Sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Rewrites the ids of a single sequence.
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

// Builds the post-processor described by `j` (null gives nullptr).
Expected<std::unique_ptr<PostProcessor>> make_post_processor(const nlohmann::json& j);

}  // namespace philora::tokenizer
