#include "server/generation.h"

#include <algorithm>

namespace philora::server {

Generation::Generation(EngineHost& host, const tokenizer::Tokenizer* tok, engine::Request r)
    : host_(host),
      tok_(tok),
      id_(r.id),
      prompt_(r.prompt),
      greedy_(r.sampling.greedy),
      ch_(std::make_shared<Channel>()) {
  std::weak_ptr<Channel> weak = ch_;
  queue_full_ = !host_.submit(std::move(r), [weak](const engine::StepOutput& o) {
    if (auto ch = weak.lock()) {
      std::lock_guard<std::mutex> lock(ch->mu);
      ch->q.push_back(o);
      ch->cv.notify_one();
    }
  });
  done_ = queue_full_;
}

Generation::~Generation() {
  if (!done_) host_.abort(id_);
}

Event Generation::next() {
  while (ready_.empty()) {
    if (done_) return Event{-1, -1, "", false, std::nullopt, engine::FinishReason::abort, "no more events", ""};
    engine::StepOutput o;
    {
      std::unique_lock<std::mutex> lock(ch_->mu);
      ch_->cv.wait(lock, [&] { return !ch_->q.empty(); });
      o = std::move(ch_->q.front());
      ch_->q.pop_front();
    }
    seed_ = o.seed;
    if (o.prompt_logprobs) prompt_logprobs_ = std::move(o.prompt_logprobs);
    if (o.new_tokens.empty()) {  // finished without a token: error, abort, or a prompt alone
      if (!o.finished()) continue;
      done_ = true;
      Event e;
      e.finish = o.finish;
      e.error = o.error;
      e.error_detail = o.error_detail;
      ready_.push_back(std::move(e));
      break;
    }
    // A step may yield several tokens: one event each, in order; the step's
    // text goes with its last.
    for (size_t i = 0; i < o.new_tokens.size(); ++i) {
      Event e;
      e.token = o.new_tokens[i];
      e.index = int64_t(tokens_.size());
      e.special = tok_ && tok_->is_special(e.token);
      if (i < o.logprobs.size()) {
        e.logprobs = o.logprobs[i];
        logprobs_.push_back(o.logprobs[i]);
      }
      if (i + 1 == o.new_tokens.size()) {
        e.text = o.text;
        e.finish = o.finish;
        e.error = o.error;
        e.error_detail = o.error_detail;
        done_ = o.finished();
      }
      tokens_.push_back(e.token);
      texts_.push_back(e.text);
      text_ += e.text;
      ready_.push_back(std::move(e));
    }
  }
  Event e = std::move(ready_.front());
  ready_.pop_front();
  return e;
}

std::string token_text(const tokenizer::Tokenizer& tok, std::span<const int32_t> before,
                       int32_t id) {
  const int32_t one[] = {id};
  if (before.empty()) return tok.decode(one, /*skip_special_tokens=*/false);
  if (before.size() > 4) before = before.subspan(before.size() - 4);
  std::vector<int32_t> ids(before.begin(), before.end());
  const std::string prefix = tok.decode(ids, /*skip_special_tokens=*/false);
  ids.push_back(id);
  const std::string all = tok.decode(ids, /*skip_special_tokens=*/false);
  if (all.size() >= prefix.size() && all.compare(0, prefix.size(), prefix) == 0)
    return all.substr(prefix.size());
  return tok.decode(one, /*skip_special_tokens=*/false);
}

}  // namespace philora::server
