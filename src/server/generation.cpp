#include "server/generation.h"

namespace philora::server {

Generation::Generation(EngineHost& host, const tokenizer::Tokenizer* tok, std::string id,
                       GenerationParams p)
    : host_(host),
      tok_(tok),
      id_(std::move(id)),
      stop_(std::move(p.stop)),
      ch_(std::make_shared<Channel>()),
      prompt_len_(int64_t(p.prompt.size())) {
  engine::GenerationRequest r;
  r.id = id_;
  r.prompt = std::move(p.prompt);
  r.adapter = std::move(p.adapter);
  r.sampling = p.sampling;
  r.max_new_tokens = p.max_new_tokens;
  r.ignore_eos = p.ignore_eos;
  if (tok_)
    for (int32_t s : tok_->stop_ids()) r.stop_token_ids.push_back(s);
  std::weak_ptr<Channel> weak = ch_;
  host_.submit(std::move(r), [weak](const engine::StepOutput& o) {
    if (auto ch = weak.lock()) {
      std::lock_guard<std::mutex> lock(ch->mu);
      ch->q.push_back(o);
      ch->cv.notify_one();
    }
  });
}

Generation::~Generation() {
  if (!done_) host_.abort(id_);
}

static bool ends_incomplete(const std::string& s) {  // decode shows a partial char as U+FFFD
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

Event Generation::next() {
  if (!ready_.empty()) {
    Event e = std::move(ready_.front());
    ready_.pop_front();
    return e;
  }
  if (done_) return Event{-1, "", false, true, "abort", "no more events"};
  engine::StepOutput o;
  {
    std::unique_lock<std::mutex> lock(ch_->mu);
    ch_->cv.wait(lock, [&] { return !ch_->q.empty(); });
    o = std::move(ch_->q.front());
    ch_->q.pop_front();
  }
  if (o.new_tokens.empty()) {  // finished without a token: error or abort
    done_ = true;
    return Event{-1, "", false, true, o.finish_reason, o.error};
  }
  Event e;
  for (int32_t t : o.new_tokens) tokens_.push_back(t);
  e.token = o.new_tokens.back();
  if (tok_) {
    e.special = tok_->is_special(e.token);
    const std::string full = tok_->decode(tokens_, /*skip_special_tokens=*/true);
    if (!ends_incomplete(full) || o.finished) {
      // Stop strings: search the region that the new text could complete.
      size_t longest = 0;
      for (const auto& s : stop_) longest = std::max(longest, s.size());
      const size_t from = emitted_.size() > longest ? emitted_.size() - longest : 0;
      size_t cut = std::string::npos;
      for (const auto& s : stop_) {
        if (s.empty()) continue;
        const size_t p = full.find(s, from);
        if (p != std::string::npos) cut = std::min(cut, p);
      }
      std::string upto = cut == std::string::npos ? full : full.substr(0, cut);
      if (upto.size() >= emitted_.size() && upto.compare(0, emitted_.size(), emitted_) == 0)
        e.text = upto.substr(emitted_.size());
      emitted_ = upto.size() >= emitted_.size() ? upto : emitted_;
      if (cut != std::string::npos) {
        e.finished = true;
        e.finish_reason = "stop_sequence";
        done_ = true;
        host_.abort(id_);
        return e;
      }
    }
  }
  if (o.finished) {
    e.finished = true;
    e.finish_reason = o.finish_reason == "stop" ? "eos_token" : o.finish_reason;
    e.error = o.error;
    done_ = true;
  }
  return e;
}

}  // namespace philora::server
