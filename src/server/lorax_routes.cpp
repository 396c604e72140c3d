// LoRAX / TGI: /generate, /generate_stream, and POST / (either, by `stream`).
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

// What the access log records of a generation.
void note(Call& call, const Generation& gen, const Event& e) {
  call.output_tokens = int64_t(gen.tokens().size());
  if (e.finished()) call.finish_reason = std::string(engine::name(e.finish));
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
  return "data:" + json_text(ev) + "\n\n";
}

void generate(const ServerContext& ctx, LoraxRequest lr, const CallPtr& call,
              httplib::Response& res) {
  const std::string id = lr.request.id;
  Generation gen(*ctx.host, ctx.tokenizer, std::move(lr.request));
  if (gen.queue_full()) return send_queue_full(res, Api::lorax);
  const Event last = run_to_end(gen);
  note(*call, gen, last);
  if (engine::is_error(last.finish)) return send_engine_error(res, Api::lorax, ctx, id, last);
  json out = {{"generated_text", gen.text()}};
  if (lr.details) {
    out["details"] = details_json(gen, last);
    out["details"]["prefill"] = json::array();
    out["details"]["tokens"] = gen.tokens();
  }
  res.set_content(json_text(out), "application/json");
}

void generate_stream(const ServerContext& ctx, LoraxRequest lr, const CallPtr& call,
                     httplib::Response& res) {
  const std::string id = lr.request.id;
  auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, std::move(lr.request));
  if (gen->queue_full()) return send_queue_full(res, Api::lorax);
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown adapter) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish)) {
    note(*call, *gen, **first);
    return send_engine_error(res, Api::lorax, ctx, id, **first);
  }
  res.set_chunked_content_provider(
      "text/event-stream", [&ctx, id, gen, first, call](size_t, httplib::DataSink& sink) {
        const Event e = *first ? std::move(**first) : gen->next();
        first->reset();
        note(*call, *gen, e);
        const std::string chunk = stream_chunk(ctx, id, *gen, e);
        if (!sink.write(chunk.data(), chunk.size())) {
          call->finish_reason = "client_gone";
          return false;  // ~Generation aborts
        }
        if (e.finished()) sink.done();
        return true;
      });
}

void handle(const ServerContext& ctx, const IdSource& next_id, LoraxRoute route,
            const CallPtr& call, httplib::Response& res) {
  auto j = parse_body(*call, res, Api::lorax);
  if (!j) return;
  try {
    LoraxRequest lr = lorax_request(*j, ctx, next_id(), route);
    call->adapter = lr.request.adapter.value_or("");
    call->prompt_tokens = int64_t(lr.request.prompt.size());
    lr.stream ? generate_stream(ctx, std::move(lr), call, res)
              : generate(ctx, std::move(lr), call, res);
  } catch (const BadRequest& e) {
    send_bad_request(res, Api::lorax, e);
  }
}

}  // namespace

void add_lorax_routes(const AddRoute& add, const ServerContext& ctx, IdSource next_id) {
  const std::pair<const char*, LoraxRoute> routes[] = {{"/generate", LoraxRoute::generate},
                                                       {"/generate_stream", LoraxRoute::generate_stream},
                                                       {"/", LoraxRoute::compat}};
  for (const auto& [path, route] : routes)
    add(path, Api::lorax,
        [&ctx, next_id, route = route](const CallPtr& call, const httplib::Request&,
                                       httplib::Response& res) {
          handle(ctx, next_id, route, call, res);
        });
}

}  // namespace philora::server
