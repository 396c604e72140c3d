// Added tokens of tokenizer.json ("added_tokens"): matched in the input before normalization
// (normalized=false) or in each normalized piece (normalized=true), leftmost-longest, honouring
// single_word, lstrip and rstrip exactly as HF's AddedVocabulary does.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"
#include "tokenizer/regex.h"

namespace philora::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A run of input: either plain text [begin, end) or an added token (id >= 0) covering it,
// including any whitespace its lstrip/rstrip absorbed.
struct Segment {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

class AddedVocabulary {
 public:
  // The model vocabulary as HF's AddedVocabulary sees it when it assigns ids.
  struct ModelVocab {
    std::function<std::optional<int32_t>(std::string_view)> token_to_id;
    size_t size = 0;  // number of entries (HF: model.get_vocab_size())
  };

  // Builds the added vocabulary as HF does on load: tokens are added in order; a token whose
  // content is already an added token or a model token takes that id, any other takes the next
  // id counting up from the model's vocabulary size -- whatever its "id" field says (real
  // tokenizer.json files, written by HF, agree with that). `normalize` maps the content of
  // normalized=true tokens into the normalized form they are matched in.
  static Expected<std::unique_ptr<AddedVocabulary>> from_json(
      const nlohmann::json& added_tokens, const ModelVocab& model,
      const std::function<std::string(std::string_view)>& normalize);

  // Splits `text` into segments covering it, using the tokens with normalized == `normalized_set`.
  void split(std::string_view text, bool normalized_set, std::vector<Segment>& out) const;
  bool has_normalized_tokens() const { return !normalized_.tokens.empty(); }

  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // Tokens that got another id than their "id" field says (HF warns about these).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  // Byte trie for leftmost-longest matching of one token set.
  struct Matcher {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
      int32_t token = -1;                                       // index into tokens_, -1 if none
    };
    std::vector<Node> nodes{Node{}};
    std::vector<int32_t> tokens;  // indices into tokens_
    bool first_byte[256] = {};
    void add(std::string_view key, int32_t token_index);
    // Longest token starting at text[i]: returns its length and sets `token`, or 0.
    size_t longest_at(std::string_view text, size_t i, int32_t& token) const;
  };

  std::vector<AddedToken> tokens_;
  std::vector<std::string> warnings_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Matcher raw_, normalized_;
  std::shared_ptr<const Regex> word_char_;  // Rust regex \w, for single_word
};

}  // namespace philora::tokenizer
