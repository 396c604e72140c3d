#include "server/generation.h"

#include <algorithm>

namespace philora::server {

Generation::Generation(EngineHost& host, const tokenizer::Tokenizer* tok, engine::Request r)
    : host_(host),
      tok_(tok),
      id_(r.id),
      stop_(r.stop),
      ch_(std::make_shared<Channel>()),
      prompt_len_(int64_t(r.prompt.size())) {
  if (tok_) {
    // The last prompt ids give the first generated token its context (its leading space).
    const size_t ctx = std::min<size_t>(r.prompt.size(), 4);
    detok_ = std::make_unique<tokenizer::IncrementalDetokenizer>(
        *tok_, /*skip_special_tokens=*/true,
        std::span<const int32_t>(r.prompt.data() + r.prompt.size() - ctx, ctx));
  }
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
    if (done_) return Event{-1, "", false, engine::FinishReason::abort, "no more events", ""};
    engine::StepOutput o;
    {
      std::unique_lock<std::mutex> lock(ch_->mu);
      ch_->cv.wait(lock, [&] { return !ch_->q.empty(); });
      o = std::move(ch_->q.front());
      ch_->q.pop_front();
    }
    if (o.new_tokens.empty()) {  // finished without a token: error or abort
      done_ = true;
      return Event{-1, "", false, o.finish, o.error, o.error_detail};
    }
    // A step may yield several tokens: one event each, in order.
    for (size_t i = 0; i < o.new_tokens.size() && !done_; ++i) {
      const bool last = o.finished() && i + 1 == o.new_tokens.size();
      Event e = on_token(o.new_tokens[i], last);
      if (last && !e.finished()) {
        e.finish = o.finish;
        e.error = o.error;
        e.error_detail = o.error_detail;
        done_ = true;
      }
      ready_.push_back(std::move(e));
    }
  }
  Event e = std::move(ready_.front());
  ready_.pop_front();
  return e;
}

Event Generation::on_token(int32_t token, bool last) {
  Event e;
  e.token = token;
  tokens_.push_back(token);
  if (!detok_) return e;
  e.special = tok_->is_special(token);
  raw_ += detok_->push(token);
  if (last) raw_ += detok_->flush();
  // A stop string ends the text where it starts; it can only start in the
  // last `longest` bytes plus what this token added.
  size_t longest = 0;
  for (const auto& st : stop_) longest = std::max(longest, st.size());
  const size_t from = searched_ > longest ? searched_ - longest : 0;
  size_t cut = std::string::npos;
  for (const auto& st : stop_)
    if (!st.empty()) cut = std::min(cut, raw_.find(st, from));
  searched_ = raw_.size();
  size_t end = cut == std::string::npos ? raw_.size() : cut;
  // Hold back a tail that may still grow into a stop string, unless the text ends here.
  if (cut == std::string::npos && !last) end -= held_back(raw_);
  if (end > emitted_.size()) {
    e.text = raw_.substr(emitted_.size(), end - emitted_.size());
    emitted_ += e.text;
  }
  if (cut != std::string::npos) {
    e.finish = engine::FinishReason::stop_sequence;
    done_ = true;
    host_.abort(id_);
  }
  return e;
}

// The longest suffix of `text` that is a proper prefix of a stop string.
size_t Generation::held_back(const std::string& text) const {
  size_t hold = 0;
  for (const auto& st : stop_)
    for (size_t n = std::min(st.size() - (st.empty() ? 0 : 1), text.size()); n > hold; --n)
      if (text.compare(text.size() - n, n, st, 0, n) == 0) {
        hold = n;
        break;
      }
  return hold;
}

}  // namespace philora::server
