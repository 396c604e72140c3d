// OpenAI: /v1/completions and /v1/chat/completions, streamed or not, in the
// shapes vLLM serves: completions' logprobs {tokens, token_logprobs,
// top_logprobs, text_offset}, chat's {content: [{token, logprob, bytes,
// top_logprobs}]}, the model's raw logprobs (-inf reported as -9999).
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include <fmt/format.h>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What every response and chunk of one completion carries.
struct Completion {
  std::string id;
  std::string model;
  int64_t created = 0;
  bool chat = false;
  bool include_usage = false;  // a streamed completion ends with a chunk of usage
  std::optional<int32_t> logprobs;
  bool echo = false;
  std::string prompt_text;
};

json usage_json(const Generation& gen) {
  const int64_t n = gen.generated_tokens();
  return {{"prompt_tokens", gen.prompt_tokens()},
          {"completion_tokens", n},
          {"total_tokens", gen.prompt_tokens() + n}};
}

// What the access log records of a generation.
void note(Call& call, const Generation& gen, const Event& e) {
  call.output_tokens = gen.generated_tokens();
  if (e.last || engine::is_error(e.finish)) call.finish_reason = std::string(engine::name(e.finish));
}

// The client's message for an error: an unknown adapter is a model that does not exist.
std::string client_message(const Completion& c, const Event& e) {
  if (e.finish == engine::FinishReason::unknown_adapter)
    return fmt::format("The model `{}` does not exist", c.model);
  return e.error;
}

double clamp_logprob(float lp) { return std::max<double>(lp, -9999.0); }  // -inf is not JSON

// A run of positions to report logprobs for: the token ids, each one's
// logprobs (nullopt: none, the prompt's first), and the ids before the first
// (the context of its text).
struct Positions {
  std::vector<int32_t> before;
  std::vector<int32_t> ids;
  std::vector<const engine::PositionLogprobs*> lps;
};

// The tokens [from, to) of an output, after the prompt too when `echo`.
Positions positions(const Generation& gen, const Output& out, size_t from, size_t to, bool echo) {
  Positions p;
  const std::vector<int32_t>& prompt = gen.prompt();
  if (echo) {
    const auto& plp = gen.prompt_logprobs();
    for (size_t i = 0; i < prompt.size(); ++i) {
      p.ids.push_back(prompt[i]);
      p.lps.push_back(i > 0 && plp && i - 1 < plp->size() ? &(*plp)[i - 1] : nullptr);
    }
  } else {
    p.before = prompt;
  }
  p.before.insert(p.before.end(), out.tokens.begin(), out.tokens.begin() + ptrdiff_t(from));
  for (size_t i = from; i < to; ++i) {
    p.ids.push_back(out.tokens[i]);
    p.lps.push_back(i < out.logprobs.size() ? &out.logprobs[i] : nullptr);
  }
  return p;
}

// Unicode code points in UTF-8 text (what vLLM's text offsets count).
int64_t code_points(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char ch) { return (uint8_t(ch) & 0xC0) != 0x80; });
}

// Completions' logprobs of `p`, offsets counted from `offset`.
json completion_logprobs(const ServerContext& ctx, const Positions& p, int32_t k, int64_t& offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  std::vector<int32_t> context = p.before;
  auto text = [&](int32_t id) {
    return ctx.tokenizer ? token_text(*ctx.tokenizer, context, id) : std::to_string(id);
  };
  for (size_t i = 0; i < p.ids.size(); ++i) {
    const std::string t = text(p.ids[i]);
    tokens.push_back(t);
    offsets.push_back(offset);
    offset += code_points(t);
    if (const engine::PositionLogprobs* lp = p.lps[i]) {
      token_logprobs.push_back(clamp_logprob(lp->chosen.logprob));
      json alts = json::object();  // the chosen token and the k most likely, by text
      alts[t] = clamp_logprob(lp->chosen.logprob);
      for (size_t j = 0; j < lp->top.size() && j < size_t(k); ++j)
        alts[text(lp->top[j].token)] = clamp_logprob(lp->top[j].logprob);
      top.push_back(alts);
    } else {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
    }
    context.push_back(p.ids[i]);
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (char ch : s) b.push_back(int(uint8_t(ch)));
  return b;
}

// Chat's logprobs of `p`: {content: [{token, logprob, bytes, top_logprobs}]}.
json chat_logprobs(const ServerContext& ctx, const Positions& p, int32_t k) {
  json content = json::array();
  std::vector<int32_t> context = p.before;
  auto entry = [&](int32_t id, float lp) {
    const std::string t = ctx.tokenizer ? token_text(*ctx.tokenizer, context, id) : std::to_string(id);
    return json{{"token", t}, {"logprob", clamp_logprob(lp)}, {"bytes", bytes_of(t)}};
  };
  for (size_t i = 0; i < p.ids.size(); ++i) {
    if (const engine::PositionLogprobs* lp = p.lps[i]) {
      json e = entry(p.ids[i], lp->chosen.logprob);
      json top = json::array();
      for (size_t j = 0; j < lp->top.size() && j < size_t(k); ++j)
        top.push_back(entry(lp->top[j].token, lp->top[j].logprob));
      e["top_logprobs"] = top;
      content.push_back(e);
    }
    context.push_back(p.ids[i]);
  }
  return {{"content", content}};
}

json logprobs_json(const ServerContext& ctx, const Completion& c, const Positions& p,
                   int64_t& offset) {
  if (!c.logprobs) return nullptr;
  return c.chat ? chat_logprobs(ctx, p, *c.logprobs) : completion_logprobs(ctx, p, *c.logprobs, offset);
}

void complete(const ServerContext& ctx, const Completion& c, Generation& gen, Call& call,
              httplib::Response& res) {
  const Event last = run_to_end(gen);
  note(call, gen, last);
  if (engine::is_error(last.finish))
    return send_engine_error(res, Api::openai, ctx, call, last, client_message(c, last));
  json choices = json::array();
  for (size_t k = 0; k < gen.outputs().size(); ++k) {
    const Output& out = gen.output(k);
    if (out.best_of_extra) continue;  // best_of's other candidates are not returned
    int64_t offset = 0;
    json choice = {{"index", k},
                   {"logprobs", logprobs_json(ctx, c, positions(gen, out, 0, out.tokens.size(), c.echo),
                                              offset)},
                   {"finish_reason", name_of(outcome(out.finish), Api::openai)}};
    if (c.chat)
      choice["message"] = {{"role", "assistant"}, {"content", out.text}};
    else
      choice["text"] = (c.echo ? c.prompt_text : "") + out.text;
    choices.push_back(choice);
  }
  json body = {{"id", c.id},
               {"object", c.chat ? "chat.completion" : "text_completion"},
               {"created", c.created},
               {"model", c.model},
               {"choices", choices},
               {"usage", usage_json(gen)}};
  res.set_content(json_text(body), "application/json");
}

// A streamed completion's state between chunks, per choice.
struct StreamState {
  std::vector<bool> sent;        // a chunk of the choice has gone out (the first: role / echo)
  std::vector<int64_t> offset;   // completions' text offset of the choice's next token
};

// One server-sent event of a streamed completion (and [DONE] after the last).
std::string stream_chunk(const ServerContext& ctx, const Completion& c, const Call& call,
                         const Generation& gen, const Event& e, StreamState& st) {
  json ev;
  if (engine::is_error(e.finish)) {
    log_engine_error(ctx, call, e);
    const Outcome& o = outcome(e.finish);
    ev = error_json(Api::openai, client_error(call, e, client_message(c, e)), o.openai_name,
                    o.openai_code);
  } else {
    const size_t k = size_t(e.output);
    if (st.sent.size() <= k) st.sent.resize(k + 1, false), st.offset.resize(k + 1, 0);
    const Output& out = gen.output(k);
    const bool echo = c.echo && !st.sent[k];
    const size_t from = e.index >= 0 ? size_t(e.index) : out.tokens.size();
    const size_t to = e.index >= 0 ? from + 1 : from;
    json choice = {{"index", k},
                   {"logprobs", logprobs_json(ctx, c, positions(gen, out, from, to, echo), st.offset[k])},
                   {"finish_reason", nullptr}};
    if (e.finished()) choice["finish_reason"] = name_of(outcome(e.finish), Api::openai);
    if (c.chat) {
      json delta = {{"content", e.text}};
      if (!st.sent[k]) delta = {{"role", "assistant"}, {"content", e.text}};
      choice["delta"] = delta;
    } else {
      choice["text"] = (echo ? c.prompt_text : "") + e.text;
    }
    st.sent[k] = true;
    ev = {{"id", c.id},
          {"object", c.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", c.created},
          {"model", c.model},
          {"choices", json::array({choice})}};
  }
  std::string chunk = "data: " + json_text(ev) + "\n\n";
  if (e.last && c.include_usage && !engine::is_error(e.finish)) {
    const json usage = {{"id", c.id},
                        {"object", c.chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", c.created},
                        {"model", c.model},
                        {"choices", json::array()},
                        {"usage", usage_json(gen)}};
    chunk += "data: " + json_text(usage) + "\n\n";
  }
  if (e.last || engine::is_error(e.finish)) chunk += "data: [DONE]\n\n";
  return chunk;
}

void stream(const ServerContext& ctx, const Completion& c, std::shared_ptr<Generation> gen,
            const CallPtr& call, httplib::Response& res) {
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown model) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish)) {
    note(*call, *gen, **first);
    return send_engine_error(res, Api::openai, ctx, *call, **first, client_message(c, **first));
  }
  auto st = std::make_shared<StreamState>();
  res.set_chunked_content_provider(
      "text/event-stream", [&ctx, c, gen, first, st, call](size_t, httplib::DataSink& sink) {
        const Event e = *first ? std::move(**first) : gen->next();
        first->reset();
        note(*call, *gen, e);
        const std::string chunk = stream_chunk(ctx, c, *call, *gen, e, *st);
        if (!sink.write(chunk.data(), chunk.size())) {
          call->finish_reason = "client_gone";
          return false;  // ~Generation aborts
        }
        if (e.last || engine::is_error(e.finish)) sink.done();
        return true;
      });
}

void completion(const ServerContext& ctx, const IdSource& next_id, bool chat, const CallPtr& call,
                httplib::Response& res) {
  auto j = parse_body(*call, res, Api::openai);
  if (!j) return;
  try {
    OpenAiRequest r = openai_request(*j, ctx, chat, (chat ? "chatcmpl-" : "cmpl-") + next_id());
    call->adapter = r.request.adapter.value_or("");
    call->prompt_tokens = int64_t(r.request.prompt.size());
    const Completion c{r.request.id, r.model,    now_seconds(), chat,
                       r.include_usage, r.logprobs, r.echo,       std::move(r.prompt_text)};
    auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, std::move(r.request));
    if (gen->queue_full()) return send_queue_full(res, Api::openai);
    if (r.stream) return stream(ctx, c, gen, call, res);
    complete(ctx, c, *gen, *call, res);
  } catch (const BadRequest& e) {
    send_bad_request(res, Api::openai, e);
  }
}

}  // namespace

void add_openai_routes(const AddRoute& add, const ServerContext& ctx, IdSource next_id) {
  for (const bool chat : {false, true})
    add(chat ? "/v1/chat/completions" : "/v1/completions", Api::openai,
        [&ctx, next_id, chat](const CallPtr& call, const httplib::Request&,
                              httplib::Response& res) { completion(ctx, next_id, chat, call, res); });
}

}  // namespace philora::server
