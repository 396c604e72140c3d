// LoRAX / TGI: /generate, /generate_stream, and POST / (either, by `stream`),
// in LoRAX's shapes (router/src/lib.rs): a token is {id, text, logprob,
// special, [alternative_tokens], skipped (a verified draft: it took no step of
// its own)}; details carry finish_reason,
// prompt_tokens, generated_tokens, skipped_tokens, seed, prefill and tokens
// (and TGI's top_tokens when top_n_tokens asks for them), best_of_sequences
// with best_of (not streamed).
#include <httplib.h>

#include <algorithm>
#include <memory>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

// What shapes the responses of one request.
struct Shape {
  bool details = false;
  bool decoder_input_details = false;
  int32_t k_alternatives = 0;
  int32_t top_n_tokens = 0;
  std::optional<std::string> full_text_prefix;
};

// Token i of an output: its context is the prompt and the tokens before it.
std::vector<int32_t> context_of(const Generation& gen, const Output& out, size_t i) {
  std::vector<int32_t> ids = gen.prompt();
  ids.insert(ids.end(), out.tokens.begin(), out.tokens.begin() + ptrdiff_t(i));
  return ids;
}

// Token i of an output: the text its event added, its logprob (processed, as
// LoRAX's), its k alternatives.
json token_json(const ServerContext& ctx, const Shape& s, const Generation& gen, const Output& out,
                size_t i) {
  const int32_t id = out.tokens[i];
  const bool has_lp = i < out.logprobs.size();
  json t = {{"id", id},
            {"text", out.texts[i]},
            {"logprob", has_lp ? json(out.logprobs[i].chosen.logprob) : json(nullptr)},
            {"special", ctx.tokenizer && ctx.tokenizer->is_special(id)}};
  if (s.k_alternatives > 0 && has_lp) {
    const std::vector<int32_t> before = context_of(gen, out, i);
    json alts = json::array();
    const auto& top = out.logprobs[i].top;
    for (size_t k = 0; k < top.size() && k < size_t(s.k_alternatives); ++k)
      alts.push_back({{"id", top[k].token},
                      {"text", ctx.tokenizer ? token_text(*ctx.tokenizer, before, top[k].token) : ""},
                      {"logprob", top[k].logprob}});
    t["alternative_tokens"] = alts;
  }
  t["skipped"] = i < out.drafted.size() && out.drafted[i] != 0;
  return t;
}

// TGI's top_tokens of token i of an output.
json top_tokens_json(const ServerContext& ctx, const Shape& s, const Generation& gen,
                     const Output& out, size_t i) {
  json top_json = json::array();
  if (i >= out.logprobs.size()) return top_json;
  const std::vector<int32_t> before = context_of(gen, out, i);
  const auto& top = out.logprobs[i].top;
  for (size_t k = 0; k < top.size() && k < size_t(s.top_n_tokens); ++k)
    top_json.push_back({{"id", top[k].token},
                        {"text", ctx.tokenizer ? token_text(*ctx.tokenizer, before, top[k].token) : ""},
                        {"logprob", top[k].logprob},
                        {"special", ctx.tokenizer && ctx.tokenizer->is_special(top[k].token)}});
  return top_json;
}

// The prompt's tokens with their (raw) logprobs; the first has none (null).
json prefill_json(const ServerContext& ctx, const Generation& gen) {
  json out = json::array();
  const std::vector<int32_t>& p = gen.prompt();
  const auto& lps = gen.prompt_logprobs();
  for (size_t i = 0; i < p.size(); ++i) {
    const bool has_lp = i > 0 && lps && i - 1 < lps->size();
    out.push_back(
        {{"id", p[i]},
         {"text", ctx.tokenizer ? token_text(*ctx.tokenizer, std::span(p.data(), i), p[i]) : ""},
         {"logprob", has_lp ? json((*lps)[i - 1].chosen.logprob) : json(nullptr)}});
  }
  return out;
}

json seed_json(const Generation& gen, const Output& out) {
  return gen.greedy() ? json(nullptr) : json(out.seed);  // LoRAX: a seed only when sampling
}

std::string generated_text(const Shape& s, const Output& out) {
  return s.full_text_prefix.value_or("") + out.text;
}

// An output's tokens (and TGI's top_tokens) in details.
void add_tokens(json& d, const ServerContext& ctx, const Shape& s, const Generation& gen,
                const Output& out) {
  json tokens = json::array();
  json top = json::array();
  for (size_t i = 0; i < out.tokens.size(); ++i) {
    tokens.push_back(token_json(ctx, s, gen, out, i));
    if (s.top_n_tokens > 0) top.push_back(top_tokens_json(ctx, s, gen, out, i));
  }
  d["tokens"] = tokens;
  if (s.top_n_tokens > 0) d["top_tokens"] = top;
}

// What the access log records of a generation.
void note(Call& call, const Generation& gen, const Event& e) {
  call.output_tokens = gen.generated_tokens();
  if (e.last || engine::is_error(e.finish)) call.finish_reason = std::string(engine::name(e.finish));
}

// One server-sent event of a stream: a token, the last one with the text and
// (when asked for) the details.
std::string stream_chunk(const ServerContext& ctx, const Shape& s, const Call& call,
                         const Generation& gen, const Event& e) {
  json ev;
  if (engine::is_error(e.finish)) {
    log_engine_error(ctx, call, e);
    ev = error_json(Api::lorax, client_error(call, e), name_of(outcome(e.finish), Api::lorax));
  } else {
    const Output& out = gen.output(size_t(e.output));
    const size_t i = size_t(std::max<int64_t>(e.index, 0));
    ev = {{"token", e.token >= 0 ? token_json(ctx, s, gen, out, i) : json(nullptr)}};
    if (s.top_n_tokens > 0)
      ev["top_tokens"] = e.token >= 0 ? top_tokens_json(ctx, s, gen, out, i) : json::array();
    ev["generated_text"] = nullptr;
    ev["details"] = nullptr;
    if (e.last) {
      ev["generated_text"] = generated_text(s, out);
      if (s.details)
        ev["details"] = {{"finish_reason", name_of(outcome(e.finish), Api::lorax)},
                         {"prompt_tokens", gen.prompt_tokens()},
                         {"generated_tokens", out.tokens.size()},
                         {"seed", seed_json(gen, out)}};
    }
  }
  return "data:" + json_text(ev) + "\n\n";
}

void generate(const ServerContext& ctx, const Shape& s, engine::Request request,
              const CallPtr& call, httplib::Response& res) {
  Generation gen(*ctx.host, ctx.tokenizer, std::move(request));
  if (gen.queue_full()) return send_queue_full(res, Api::lorax);
  const Event last = run_to_end(gen);
  note(*call, gen, last);
  if (engine::is_error(last.finish)) return send_engine_error(res, Api::lorax, ctx, *call, last);
  // Output 0 is the answer (with best_of: the best); the other candidates
  // are LoRAX's best_of_sequences.
  const Output& best = gen.output(0);
  json out = {{"generated_text", generated_text(s, best)}};
  if (s.details || s.decoder_input_details) {
    const json prefill = s.decoder_input_details ? prefill_json(ctx, gen) : json::array();
    json d = {{"finish_reason", name_of(outcome(best.finish), Api::lorax)},
              {"prompt_tokens", gen.prompt_tokens()},
              {"generated_tokens", best.tokens.size()},
              {"skipped_tokens", gen.drafted_tokens(0)},
              {"seed", seed_json(gen, best)},
              {"prefill", prefill}};
    add_tokens(d, ctx, s, gen, best);
    if (gen.outputs().size() > 1) {
      json seqs = json::array();
      for (size_t k = 1; k < gen.outputs().size(); ++k) {
        const Output& o = gen.output(k);
        json q = {{"generated_text", generated_text(s, o)},
                  {"finish_reason", name_of(outcome(o.finish), Api::lorax)},
                  {"generated_tokens", o.tokens.size()},
                  {"seed", seed_json(gen, o)},
                  {"prefill", prefill}};
        add_tokens(q, ctx, s, gen, o);
        seqs.push_back(q);
      }
      d["best_of_sequences"] = seqs;
    }
    out["details"] = d;
  }
  // LoRAX's token-count headers (router/src/server.rs) of the answer.
  const auto generated = int64_t(best.tokens.size());
  res.set_header("x-prompt-tokens", std::to_string(gen.prompt_tokens()));
  res.set_header("x-generated-tokens", std::to_string(generated));
  res.set_header("x-skipped-tokens", std::to_string(gen.drafted_tokens(0)));
  res.set_header("x-total-tokens", std::to_string(gen.prompt_tokens() + generated));
  res.set_content(json_text(out), "application/json");
}

void generate_stream(const ServerContext& ctx, const Shape& s, engine::Request request,
                     const CallPtr& call, httplib::Response& res) {
  auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, std::move(request));
  if (gen->queue_full()) return send_queue_full(res, Api::lorax);
  // The first event decides the status: a request that fails before its
  // first token (refused, unknown adapter) is an error response, not a stream.
  auto first = std::make_shared<std::optional<Event>>(gen->next());
  if (engine::is_error((*first)->finish)) {
    note(*call, *gen, **first);
    return send_engine_error(res, Api::lorax, ctx, *call, **first);
  }
  res.set_chunked_content_provider(
      "text/event-stream", [&ctx, s, gen, first, call](size_t, httplib::DataSink& sink) {
        const Event e = *first ? std::move(**first) : gen->next();
        first->reset();
        note(*call, *gen, e);
        const std::string chunk = stream_chunk(ctx, s, *call, *gen, e);
        if (!sink.write(chunk.data(), chunk.size())) {
          call->finish_reason = "client_gone";
          return false;  // ~Generation aborts
        }
        if (e.last || engine::is_error(e.finish)) sink.done();
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
    const Shape s{lr.details, lr.decoder_input_details, lr.k_alternatives, lr.top_n_tokens,
                  std::move(lr.full_text_prefix)};
    lr.stream ? generate_stream(ctx, s, std::move(lr.request), call, res)
              : generate(ctx, s, std::move(lr.request), call, res);
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
