// One request as an HTTP handler sees it: submitted to the engine host, then
// read event by event (token id + the text it adds), with stop strings.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "server/engine_host.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace philora::server {

struct Event {
  int32_t token = -1;  // -1 for a final event that carries no token
  std::string text;    // text this token adds (may be empty while a UTF-8 char is incomplete)
  bool special = false;
  engine::FinishReason finish = engine::FinishReason::none;  // set on the last event
  std::string error;         // with an error reason: the message for the client
  std::string error_detail;  // the full message, for the server's log
  bool finished() const { return finish != engine::FinishReason::none; }
};

class Generation {
 public:
  // Submits the request; its stop strings (request.stop) end the text here.
  // When the host's waiting queue is full, the request is not submitted:
  // queue_full() says so, and there are no events.
  Generation(EngineHost& host, const tokenizer::Tokenizer* tok, engine::Request request);
  ~Generation();  // aborts the request if it has not finished
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Blocks for the next event; after a finished event there are no more.
  Event next();
  const std::string& text() const { return emitted_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t prompt_tokens() const { return prompt_len_; }
  bool queue_full() const { return queue_full_; }

 private:
  Event on_token(int32_t token, bool last);
  size_t held_back(const std::string& text) const;

  struct Channel {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<engine::StepOutput> q;
  };
  EngineHost& host_;
  const tokenizer::Tokenizer* tok_;
  std::string id_;
  std::vector<std::string> stop_;
  std::shared_ptr<Channel> ch_;
  std::deque<Event> ready_;
  std::vector<int32_t> tokens_;
  std::unique_ptr<tokenizer::IncrementalDetokenizer> detok_;  // null without a tokenizer
  std::string raw_;                                           // all text so far
  std::string emitted_;  // text handed out (raw_ up to a stop string or a possible start of one)
  size_t searched_ = 0;  // raw_ bytes already searched for stop strings
  int64_t prompt_len_ = 0;
  bool done_ = false;
  bool queue_full_ = false;
};

}  // namespace philora::server
