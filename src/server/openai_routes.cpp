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
};

// The client's message for an error: an unknown adapter is a model that does not exist.
std::string client_message(const Completion& c, const Event& e) {
  if (e.finish == engine::FinishReason::unknown_adapter)
    return fmt::format("The model `{}` does not exist", c.model);
  return e.error;
}

void complete(const ServerContext& ctx, const Completion& c, Generation& gen,
              httplib::Response& res) {
  const Event last = run_to_end(gen);
  if (engine::is_error(last.finish))
    return send_engine_error(res, Api::openai, ctx, c.id, last, client_message(c, last));
  json choice = {{"index", 0},
                 {"finish_reason", name_of(outcome(last.finish), Api::openai)},
                 {"logprobs", nullptr}};
  if (c.chat)
    choice["message"] = {{"role", "assistant"}, {"content", gen.text()}};
  else
    choice["text"] = gen.text();
  const int64_t n = int64_t(gen.tokens().size());
  json out = {{"id", c.id},
              {"object", c.chat ? "chat.completion" : "text_completion"},
              {"created", c.created},
              {"model", c.model},
              {"choices", json::array({choice})},
              {"usage",
               {{"prompt_tokens", gen.prompt_tokens()},
                {"completion_tokens", n},
                {"total_tokens", gen.prompt_tokens() + n}}}};
  res.set_content(out.dump(), "application/json");
}

// One server-sent event of a streamed completion (and [DONE] after the last).
std::string stream_chunk(const ServerContext& ctx, const Completion& c, const Event& e,
                         bool first) {
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
  std::string chunk = "data: " + ev.dump() + "\n\n";
  if (e.finished()) chunk += "data: [DONE]\n\n";
  return chunk;
}

void stream(const ServerContext& ctx, const Completion& c, std::shared_ptr<Generation> gen,
            httplib::Response& res) {
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown model) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish))
    return send_engine_error(res, Api::openai, ctx, c.id, **first, client_message(c, **first));
  auto sent = std::make_shared<bool>(false);
  res.set_chunked_content_provider("text/event-stream",
                                   [&ctx, c, gen, first, sent](size_t, httplib::DataSink& sink) {
                                     const Event e = *first ? std::move(**first) : gen->next();
                                     first->reset();
                                     const std::string chunk = stream_chunk(ctx, c, e, !*sent);
                                     *sent = true;
                                     if (!sink.write(chunk.data(), chunk.size()))
                                       return false;  // client gone: ~Generation aborts
                                     if (e.finished()) sink.done();
                                     return true;
                                   });
}

void completion(const ServerContext& ctx, const IdSource& next_id, bool chat,
                const httplib::Request& req, httplib::Response& res) {
  auto j = parse_body(req, res, Api::openai);
  if (!j) return;
  try {
    OpenAiRequest r = openai_request(*j, ctx, chat, (chat ? "chatcmpl-" : "cmpl-") + next_id());
    const Completion c{r.request.id, r.model, now_seconds(), chat};
    auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, std::move(r.request));
    if (r.stream) return stream(ctx, c, gen, res);
    complete(ctx, c, *gen, res);
  } catch (const BadRequest& e) {
    send_error(res, Api::openai, e.status, e.message, "invalid_request_error");
  }
}

}  // namespace

void add_openai_routes(httplib::Server& http, const ServerContext& ctx, IdSource next_id) {
  for (const bool chat : {false, true})
    http.Post(chat ? "/v1/chat/completions" : "/v1/completions",
              [&ctx, next_id, chat](const httplib::Request& req, httplib::Response& res) {
                completion(ctx, next_id, chat, req, res);
              });
}

}  // namespace philora::server
