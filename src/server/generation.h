// One request as an HTTP handler sees it: submitted to the engine host, then
// read event by event. The engine (given the server's tokenizer) detokenizes,
// matches stop strings and computes logprobs; an event carries one new token,
// the text it adds (StepOutput::text) and its logprobs when asked for.
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
  int32_t token = -1;  // -1 for a final event that carries no token
  int64_t index = -1;  // the token's place among the generated ones (Generation::tokens())
  std::string text;    // text this token adds (empty while held back or incomplete)
  bool special = false;
  std::optional<engine::PositionLogprobs> logprobs;  // when the request asks for logprobs
  engine::FinishReason finish = engine::FinishReason::none;  // set on the last event
  std::string error;         // with an error reason: the message for the client
  std::string error_detail;  // the full message, for the server's log
  bool finished() const { return finish != engine::FinishReason::none; }
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

  // Blocks for the next event; after a finished event there are no more.
  Event next();
  const std::string& text() const { return text_; }             // the events' texts joined
  const std::vector<int32_t>& tokens() const { return tokens_; }  // [generated]
  const std::vector<std::string>& texts() const { return texts_; }  // [generated] each event's text
  // [generated] when the request asks for logprobs.
  const std::vector<engine::PositionLogprobs>& logprobs() const { return logprobs_; }
  // [prompt_len - 1] once the prompt is done, when the request asks for them.
  const std::optional<std::vector<engine::PositionLogprobs>>& prompt_logprobs() const {
    return prompt_logprobs_;
  }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  int64_t prompt_tokens() const { return int64_t(prompt_.size()); }
  uint64_t seed() const { return seed_; }  // the seed the draws came from (given or drawn)
  bool greedy() const { return greedy_; }
  bool queue_full() const { return queue_full_; }

 private:
  struct Channel {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<engine::StepOutput> q;
  };
  EngineHost& host_;
  const tokenizer::Tokenizer* tok_;
  std::string id_;
  std::vector<int32_t> prompt_;
  bool greedy_ = true;
  std::shared_ptr<Channel> ch_;
  std::deque<Event> ready_;
  std::vector<int32_t> tokens_;
  std::vector<std::string> texts_;
  std::vector<engine::PositionLogprobs> logprobs_;
  std::optional<std::vector<engine::PositionLogprobs>> prompt_logprobs_;
  std::string text_;
  uint64_t seed_ = 0;
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
