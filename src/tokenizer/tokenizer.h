// A Hugging Face tokenizer.json, encoded and decoded exactly as the `tokenizers` library does:
//
//   text -> added tokens (non-normalized) -> normalizer -> added tokens (normalized)
//        -> pre-tokenizer -> BPE model per piece -> post-processor (special tokens)
//   ids  -> token strings (added tokens first, special ones optionally skipped) -> decoder
//
// Anything in a tokenizer.json that is not supported is refused at load with a message naming it.
// Encoding and decoding are const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

class AddedVocabulary;
class BpeModel;
class Decoder;
class Normalizer;
class PostProcessor;
class PreTokenizer;
struct AddedToken;

class Tokenizer {
 public:
  // Loads a tokenizer.json file.
  static Expected<std::unique_ptr<Tokenizer>> from_file(const std::string& path);
  // Parses tokenizer.json text.
  static Expected<std::unique_ptr<Tokenizer>> from_json_string(std::string_view json);
  static Expected<std::unique_ptr<Tokenizer>> from_json(const nlohmann::json& j);
  // Loads `dir`/tokenizer.json plus, when present, tokenizer_config.json (bos/eos tokens) and
  // generation_config.json (eos_token_id, which may list several stop tokens).
  static Expected<std::unique_ptr<Tokenizer>> from_model_dir(const std::string& dir);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Ids of `text`. Ill-formed UTF-8 is first replaced by U+FFFD (one per maximal ill-formed
  // subpart). With `add_special_tokens`, the post-processor adds its tokens (e.g. BOS).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;

  // Where a token came from in the input: code points [begin, end) of the (UTF-8-repaired) text,
  // what HF tokenizers reports as `encoding.offsets` (Python; Rust's encode_char_offsets). A
  // token made by the post-processor (BOS, ...) gets (0, 0). Tokens that share a character
  // (byte-level or byte-fallback pieces of one code point) each get that character's span; a
  // character a normalizer put in front (SentencePiece's "▁") belongs to the first original one;
  // a ByteLevel post-processor with trim_offsets takes leading and trailing spaces out of a span
  // as HF does.
  struct Offsets {
    size_t begin = 0, end = 0;
    bool operator==(const Offsets&) const = default;
  };
  struct Encoding {
    std::vector<int32_t> ids;
    std::vector<Offsets> offsets;  // [ids.size()]
  };
  // The ids of encode(text, add_special_tokens) with each token's offsets. Encodes each run of
  // the input between added tokens as encode() does, then aligns that run's tokens with it:
  // each token's bytes (token_bytes) are matched left to right against the run, a leading
  // space that matches nothing is text the normalizer or pre-tokenizer inserted. A run whose
  // tokens cannot be aligned so (an unknown token, a normalizer that rewrites text) gives each
  // of its tokens the whole run's span.
  Encoding encode_with_offsets(std::string_view text, bool add_special_tokens = false) const;
  // Text of `ids`; unknown ids are skipped. With `skip_special_tokens`, added tokens marked
  // special are left out.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The raw bytes token `id` adds to a text in the middle of a sequence (for constrained
  // decoding): byte-level BPE tokens through the GPT-2 byte map, <0xNN> byte-fallback tokens as
  // their byte, SentencePiece's "▁" as a space (also at the start of a text, where decode()
  // may strip it), non-special added tokens as their content. Special tokens and unknown ids
  // give nullopt.
  std::optional<std::string> token_bytes(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  // One past the largest id of the model or the added tokens.
  size_t vocab_size() const;
  // True for an added token marked "special" (skipped by decode(..., true)).
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;
  // Things HF tokenizers warns about at load, e.g. an added token whose "id" field disagrees with
  // the id it gets (the id it gets is the one used, as in HF).
  const std::vector<std::string>& load_warnings() const;

  // From tokenizer_config.json (when loaded from a model dir), else unset.
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  const std::optional<std::string>& eos_token() const { return eos_token_; }
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // Ids that end a generation: eos_id() and generation_config.json's eos_token_id(s).
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }

 private:
  Tokenizer();
  static Expected<std::unique_ptr<Tokenizer>> from_checked_json(const nlohmann::json& j);
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& ids) const;
  void encode_pieces(std::string_view text, bool at_start, size_t prefix_bytes,
                     std::vector<int32_t>& ids) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<AddedVocabulary> added_;
  std::optional<std::string> bos_token_, eos_token_;
  // A ByteLevel post-processor with trim_offsets (HF trims spaces out of offsets there).
  bool trim_offsets_ = false;
  bool trim_add_prefix_space_ = false;
  std::vector<int32_t> stop_ids_;
};

}  // namespace philora::tokenizer
