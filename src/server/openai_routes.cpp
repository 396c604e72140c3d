// OpenAI: /v1/completions and /v1/chat/completions, streamed or not.
#include <httplib.h>

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
};

json usage_json(const Generation& gen) {
  const int64_t n = int64_t(gen.tokens().size());
  return {{"prompt_tokens", gen.prompt_tokens()},
          {"completion_tokens", n},
          {"total_tokens", gen.prompt_tokens() + n}};
}

// What the access log records of a generation.
void note(Call& call, const Generation& gen, const Event& e) {
  call.output_tokens = int64_t(gen.tokens().size());
  if (e.finished()) call.finish_reason = std::string(engine::name(e.finish));
}

// The client's message for an error: an unknown adapter is a model that does not exist.
std::string client_message(const Completion& c, const Event& e) {
  if (e.finish == engine::FinishReason::unknown_adapter)
    return fmt::format("The model `{}` does not exist", c.model);
  return e.error;
}

void complete(const ServerContext& ctx, const Completion& c, Generation& gen, Call& call,
              httplib::Response& res) {
  const Event last = run_to_end(gen);
  note(call, gen, last);
  if (engine::is_error(last.finish))
    return send_engine_error(res, Api::openai, ctx, c.id, last, client_message(c, last));
  json choice = {{"index", 0},
                 {"finish_reason", name_of(outcome(last.finish), Api::openai)},
                 {"logprobs", nullptr}};
  if (c.chat)
    choice["message"] = {{"role", "assistant"}, {"content", gen.text()}};
  else
    choice["text"] = gen.text();
  json out = {{"id", c.id},
              {"object", c.chat ? "chat.completion" : "text_completion"},
              {"created", c.created},
              {"model", c.model},
              {"choices", json::array({choice})},
              {"usage", usage_json(gen)}};
  res.set_content(json_text(out), "application/json");
}

// One server-sent event of a streamed completion (and [DONE] after the last).
std::string stream_chunk(const ServerContext& ctx, const Completion& c, const Generation& gen,
                         const Event& e, bool first) {
  json ev;
  if (engine::is_error(e.finish)) {
    log_engine_error(ctx, c.id, e);
    const Outcome& o = outcome(e.finish);
    ev = error_json(Api::openai, client_message(c, e), o.openai_name, o.openai_code);
  } else {
    json choice = {{"index", 0}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
    if (e.finished()) choice["finish_reason"] = name_of(outcome(e.finish), Api::openai);
    if (c.chat) {
      json delta = {{"content", e.text}};
      if (first) delta["role"] = "assistant";
      choice["delta"] = delta;
    } else {
      choice["text"] = e.text;
    }
    ev = {{"id", c.id},
          {"object", c.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", c.created},
          {"model", c.model},
          {"choices", json::array({choice})}};
  }
  std::string chunk = "data: " + json_text(ev) + "\n\n";
  if (e.finished() && c.include_usage && !engine::is_error(e.finish)) {
    const json usage = {{"id", c.id},
                        {"object", c.chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", c.created},
                        {"model", c.model},
                        {"choices", json::array()},
                        {"usage", usage_json(gen)}};
    chunk += "data: " + json_text(usage) + "\n\n";
  }
  if (e.finished()) chunk += "data: [DONE]\n\n";
  return chunk;
}

void stream(const ServerContext& ctx, const Completion& c, std::shared_ptr<Generation> gen,
            const CallPtr& call, httplib::Response& res) {
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown model) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish)) {
    note(*call, *gen, **first);
    return send_engine_error(res, Api::openai, ctx, c.id, **first, client_message(c, **first));
  }
  auto sent = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream", [&ctx, c, gen, first, sent, call](size_t, httplib::DataSink& sink) {
        const Event e = *first ? std::move(**first) : gen->next();
        first->reset();
        note(*call, *gen, e);
        const std::string chunk = stream_chunk(ctx, c, *gen, e, !*sent);
        *sent = true;
        if (!sink.write(chunk.data(), chunk.size())) {
          call->finish_reason = "client_gone";
          return false;  // ~Generation aborts
        }
        if (e.finished()) sink.done();
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
    const Completion c{r.request.id, r.model, now_seconds(), chat, r.include_usage};
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
