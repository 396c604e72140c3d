#include "server/generation.h"

#include <algorithm>

namespace philora::server {

Generation::Generation(EngineHost& host, const tokenizer::Tokenizer* tok, engine::Request r)
    : host_(host),
      tok_(tok),
      id_(r.id),
      prompt_(r.prompt),
      greedy_(r.sampling.greedy),
      ch_(std::make_shared<Channel>()),
      outputs_(size_t(std::max(1, r.num_candidates()))) {
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

int64_t Generation::generated_tokens() const {
  int64_t n = 0;
  for (const Output& o : outputs_)
    if (!o.best_of_extra) n += int64_t(o.tokens.size());
  return n;
}

int64_t Generation::drafted_tokens(size_t i) const {
  const std::vector<uint8_t>& d = outputs_[i].drafted;
  return std::count(d.begin(), d.end(), uint8_t(1));
}

// One step output into events: one per new token, in order, the step's text
// with the last; an output that ends without a token gets an event of its own.
void Generation::take(engine::StepOutput o) {
  if (o.prompt_logprobs) prompt_logprobs_ = std::move(o.prompt_logprobs);
  const int32_t index = o.index;
  if (index < 0 || size_t(index) >= outputs_.size()) return;  // not one of ours
  Output& out = outputs_[size_t(index)];
  out.seed = o.seed;
  out.best_of_extra = o.best_of_extra;
  if (o.finished()) out.finish = o.finish;
  const bool last = o.request_finished();
  if (o.new_tokens.empty()) {
    if (!o.finished()) return;
    Event e;
    e.output = index;
    e.finish = o.finish;
    e.last = last;
    e.error = o.error;
    e.error_detail = o.error_detail;
    ready_.push_back(std::move(e));
    done_ = last;
    return;
  }
  for (size_t i = 0; i < o.new_tokens.size(); ++i) {
    Event e;
    e.output = index;
    e.token = o.new_tokens[i];
    e.index = int64_t(out.tokens.size());
    e.drafted = i < o.drafted.size() && o.drafted[i] != 0;
    if (i < o.logprobs.size()) {
      e.logprobs = o.logprobs[i];
      out.logprobs.push_back(o.logprobs[i]);
    }
    if (i + 1 == o.new_tokens.size()) {
      e.text = o.text;
      e.finish = o.finish;
      e.last = last;
      e.error = o.error;
      e.error_detail = o.error_detail;
      done_ = last;
    }
    out.tokens.push_back(e.token);
    out.texts.push_back(e.text);
    out.drafted.push_back(uint8_t(e.drafted));
    out.text += e.text;
    ready_.push_back(std::move(e));
  }
}

Event Generation::next() {
  while (ready_.empty()) {
    if (done_) {
      Event e;
      e.finish = engine::FinishReason::abort;
      e.last = true;
      e.error = "no more events";
      return e;
    }
    engine::StepOutput o;
    {
      std::unique_lock<std::mutex> lock(ch_->mu);
      ch_->cv.wait(lock, [&] { return !ch_->q.empty(); });
      o = std::move(ch_->q.front());
      ch_->q.pop_front();
    }
    take(std::move(o));
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
