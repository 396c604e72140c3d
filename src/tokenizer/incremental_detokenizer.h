// Streaming detokenization: each generated id yields the text it adds.
//
//   IncrementalDetokenizer detok(tokenizer);
//   for (id : generated) send(detok.push(id));
//   send(detok.flush());
//
// Guarantees:
//   - a delta never ends inside a UTF-8 character: text that still renders as an incomplete
//     sequence (byte-fallback pieces of an emoji, byte-level halves of a CJK character) is held
//     back until the character completes;
//   - the deltas, plus flush(), concatenate to exactly tokenizer.decode(all ids) (with the same
//     skip_special_tokens), so SentencePiece's rule "the first token loses its leading space"
//     applies at the start of the generation only, not to every token. One exception, inherent
//     to streaming: HF renders an ill-formed run of <0xNN> byte-fallback tokens as one U+FFFD per
//     byte of the whole run, including characters of the run already sent; a stream cannot take
//     them back (the deltas stay valid UTF-8 and never repeat text).
// How: the text of a short window of recent ids is decoded twice, without and with the new id;
// the difference is the delta (the approach of HF's DecodeStream, TGI and vLLM).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace philora::tokenizer {

class Tokenizer;

class IncrementalDetokenizer {
 public:
  // `context_ids` (optional) are ids decoded before the generation, e.g. the end of the prompt:
  // they give the first generated tokens their context (a leading space is then kept) and are
  // never emitted.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = true,
                                  std::span<const int32_t> context_ids = {});

  // Adds one id; returns the text it completes (often empty while a character is incomplete).
  std::string push(int32_t id);
  // Returns whatever is held back (an incomplete character renders as U+FFFD), ending the stream.
  std::string flush();

  // All pushed ids (without the context).
  std::span<const int32_t> ids() const { return std::span<const int32_t>(ids_).subspan(context_); }

 private:
  std::string decode_range(size_t begin, size_t end) const;

  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // context ids, then generated ids
  size_t context_ = 0;        // number of context ids
  size_t prefix_ = 0;         // start of the decoding window
  size_t read_ = 0;           // ids_[prefix_, read_) are already emitted
};

}  // namespace philora::tokenizer
