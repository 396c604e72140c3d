// LoRAX / TGI: /generate and /generate_stream.
#include <httplib.h>

#include <memory>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

json details_json(const Generation& gen, const Event& last) {
  return {{"finish_reason", name_of(outcome(last.finish), Api::lorax)},
          {"generated_tokens", gen.tokens().size()},
          {"prompt_tokens", gen.prompt_tokens()},
          {"seed", nullptr}};
}

// One server-sent event of /generate_stream.
std::string stream_chunk(const ServerContext& ctx, const std::string& id, const Generation& gen,
                         const Event& e) {
  json ev;
  if (engine::is_error(e.finish)) {
    log_engine_error(ctx, id, e);
    ev = error_json(Api::lorax, e.error, name_of(outcome(e.finish), Api::lorax));
  } else {
    ev = {{"token",
           {{"id", e.token}, {"text", e.text}, {"logprob", nullptr}, {"special", e.special}}},
          {"generated_text", nullptr},
          {"details", nullptr}};
    if (e.finished()) {
      ev["generated_text"] = gen.text();
      ev["details"] = details_json(gen, e);
    }
  }
  return "data:" + ev.dump() + "\n\n";
}

void generate(const ServerContext& ctx, LoraxRequest lr, httplib::Response& res) {
  const std::string id = lr.request.id;
  Generation gen(*ctx.host, ctx.tokenizer, std::move(lr.request));
  const Event last = run_to_end(gen);
  if (engine::is_error(last.finish)) return send_engine_error(res, Api::lorax, ctx, id, last);
  json out = {{"generated_text", gen.text()}};
  if (lr.details) {
    out["details"] = details_json(gen, last);
    out["details"]["prefill"] = json::array();
    out["details"]["tokens"] = gen.tokens();
  }
  res.set_content(out.dump(), "application/json");
}

void generate_stream(const ServerContext& ctx, LoraxRequest lr, httplib::Response& res) {
  const std::string id = lr.request.id;
  auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, std::move(lr.request));
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown adapter) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish))
    return send_engine_error(res, Api::lorax, ctx, id, **first);
  res.set_chunked_content_provider("text/event-stream",
                                   [&ctx, id, gen, first](size_t, httplib::DataSink& sink) {
                                     const Event e = *first ? std::move(**first) : gen->next();
                                     first->reset();
                                     const std::string chunk = stream_chunk(ctx, id, *gen, e);
                                     if (!sink.write(chunk.data(), chunk.size()))
                                       return false;  // client gone: ~Generation aborts
                                     if (e.finished()) sink.done();
                                     return true;
                                   });
}

}  // namespace

void add_lorax_routes(httplib::Server& http, const ServerContext& ctx, IdSource next_id) {
  for (const bool stream : {false, true}) {
    http.Post(stream ? "/generate_stream" : "/generate",
              [&ctx, next_id, stream](const httplib::Request& req, httplib::Response& res) {
                auto j = parse_body(req, res, Api::lorax);
                if (!j) return;
                try {
                  LoraxRequest lr = lorax_request(*j, ctx, next_id());
                  stream ? generate_stream(ctx, std::move(lr), res)
                         : generate(ctx, std::move(lr), res);
                } catch (const BadRequest& e) {
                  send_error(res, Api::lorax, e.status, e.message, "validation");
                }
              });
  }
}

}  // namespace philora::server
