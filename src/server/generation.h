// One request as an HTTP handler sees it: submitted to the engine host, then
// read event by event. The engine (given the server's tokenizer) detokenizes,
// matches stop strings and computes logprobs; an event carries one new token
// of one of the request's outputs (Request::n, best_of), the text it adds
// (StepOutput::text) and its logprobs when asked for.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "server/engine_host.h"
#include "tokenizer/tokenizer.h"

namespace philora::server {

struct Event {
  int32_t output = 0;  // which of the request's outputs (StepOutput::index)
  int32_t token = -1;  // -1 for an event that carries no token (an error, an abort)
  int64_t index = -1;  // the token's place among its output's tokens (Output::tokens)
  std::string text;    // text this token adds (empty while held back or incomplete)
  bool drafted = false;  // a verified draft: StepOutput::drafted (LoRAX's "skipped")
  std::optional<engine::PositionLogprobs> logprobs;  // when the request asks for logprobs
  engine::FinishReason finish = engine::FinishReason::none;  // set when its output ends
  bool last = false;         // the request's last event: every output has ended
  std::string error;         // with an error reason: the message for the client
  std::string error_detail;  // the full message, for the server's log
  bool finished() const { return finish != engine::FinishReason::none; }
};

// What one output has so far.
struct Output {
  std::vector<int32_t> tokens;                     // [generated]
  std::vector<std::string> texts;                  // [generated] each event's text
  std::vector<uint8_t> drafted;                    // [generated] Event::drafted
  std::vector<engine::PositionLogprobs> logprobs;  // [generated] when asked for
  std::string text;                                // the texts joined
  uint64_t seed = 0;                               // its draws' seed (candidate i: seed + i)
  engine::FinishReason finish = engine::FinishReason::none;
  bool best_of_extra = false;  // a best_of candidate beyond the n returned
};

class Generation {
 public:
  // Submits the request. When the host's waiting queue is full, the request
  // is not submitted: queue_full() says so, and there are no events. `tok`
  // is the engine's tokenizer (null: no text, token ids only).
  Generation(EngineHost& host, const tokenizer::Tokenizer* tok, engine::Request request);
  ~Generation();  // aborts the request if it has not finished
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Blocks for the next event; after the last there are no more.
  Event next();
  // [num_candidates] the request's outputs, by StepOutput::index.
  const std::vector<Output>& outputs() const { return outputs_; }
  const Output& output(size_t i = 0) const { return outputs_[i]; }
  // The first output's (a request of one output: its own).
  const std::string& text() const { return outputs_[0].text; }
  // How many of output i's tokens were verified drafts (LoRAX's skipped_tokens).
  int64_t drafted_tokens(size_t i = 0) const;
  const std::vector<int32_t>& tokens() const { return outputs_[0].tokens; }
  // Tokens generated over the outputs returned (best_of extras left out).
  int64_t generated_tokens() const;
  // [prompt_len - 1] once the prompt is done, when the request asks for them.
  const std::optional<std::vector<engine::PositionLogprobs>>& prompt_logprobs() const {
    return prompt_logprobs_;
  }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  int64_t prompt_tokens() const { return int64_t(prompt_.size()); }
  bool greedy() const { return greedy_; }
  bool queue_full() const { return queue_full_; }

 private:
  struct Channel {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<engine::StepOutput> q;
  };
  void take(engine::StepOutput o);

  EngineHost& host_;
  const tokenizer::Tokenizer* tok_;
  std::string id_;
  std::vector<int32_t> prompt_;
  bool greedy_ = true;
  std::shared_ptr<Channel> ch_;
  std::deque<Event> ready_;
  std::vector<Output> outputs_;
  std::optional<std::vector<engine::PositionLogprobs>> prompt_logprobs_;
  bool done_ = false;
  bool queue_full_ = false;
};

// The text of one token as the APIs show it beside a logprob (LoRAX's
// alternatives and prefill, OpenAI's logprobs): what `id` adds to the text of
// the (up to 4) ids before it, so that a SentencePiece token keeps its leading
// space; special tokens keep their text. Without ids before it, or when the
// context decodes differently once `id` follows, decode([id]) alone.
std::string token_text(const tokenizer::Tokenizer& tok, std::span<const int32_t> before,
                       int32_t id);

}  // namespace philora::server
