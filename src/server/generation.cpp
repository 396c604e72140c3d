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
  if (tok_) {
    // The last prompt ids give the first generated token its context (its leading space).
    const size_t ctx = std::min<size_t>(p.prompt.size(), 4);
    detok_ = std::make_unique<tokenizer::IncrementalDetokenizer>(
        *tok_, /*skip_special_tokens=*/true,
        std::span<const int32_t>(p.prompt.data() + p.prompt.size() - ctx, ctx));
  }
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
  if (detok_) {
    e.special = tok_->is_special(e.token);
    const std::string delta =
        detok_->push(e.token) + (o.finished ? detok_->flush() : std::string());
    const size_t before = raw_.size();
    raw_ += delta;
    // Stop strings: search where the new text could complete one.
    size_t longest = 0;
    for (const auto& st : stop_) longest = std::max(longest, st.size());
    const size_t from = before > longest ? before - longest : 0;
    size_t cut = std::string::npos;
    for (const auto& st : stop_)
      if (!st.empty()) cut = std::min(cut, raw_.find(st, from));
    const size_t end = cut == std::string::npos ? raw_.size() : cut;
    if (end > emitted_.size()) {
      e.text = raw_.substr(emitted_.size(), end - emitted_.size());
      emitted_ += e.text;
    }
    if (cut != std::string::npos) {
      e.finished = true;
      e.finish_reason = "stop_sequence";
      done_ = true;
      host_.abort(id_);
      return e;
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
