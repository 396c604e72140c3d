// LoRAX / TGI {inputs, parameters, stream} -> engine::Request. Every
// parameter of LoRAX's GenerateParameters (and TGI's top_n_tokens) is
// honoured, or refused with a 422 that names it.
#include <fmt/format.h>

#include <algorithm>

#include "server/request_fields.h"

namespace philora::server {

using nlohmann::json;
using namespace fields;

namespace {

constexpr Api kApi = Api::lorax;

constexpr const char* kTop[] = {"inputs", "parameters", "stream"};
constexpr const char* kParams[] = {
    "adapter_id",         "adapter_source",    "merged_adapters",  "adapter_parameters",
    "max_new_tokens",     "temperature",       "top_k",            "top_p",
    "typical_p",          "do_sample",         "seed",             "stop",
    "ignore_eos_token",   "details",           "decoder_input_details",
    "truncate",           "repetition_penalty", "frequency_penalty", "presence_penalty",
    "return_full_text",   "return_k_alternatives", "top_n_tokens", "best_of",
    "response_format"};

constexpr Unsupported kUnsupported[] = {
    {"watermark", false_or_null,
     "is not supported: this server does not watermark its output (send false or leave it out)"},
    {"apply_chat_template", false_or_null, "is not supported: use /v1/chat/completions"},
    {"api_token", null_only, "is not needed: adapters load from the server's adapter directory"},
};

// The adapter a request names: adapter_id, or LoRAX's merged_adapters (its
// wire name; `adapter_parameters` in its docs) when it holds one adapter
// alone. Merging several is refused.
std::optional<std::string> adapter_of(const json& params, const ServerContext& ctx) {
  std::optional<std::string> adapter = get_string(params, "adapter_id", kApi);
  for (const char* key : {"merged_adapters", "adapter_parameters"}) {
    if (!present(params, key)) continue;
    const json& m = params[key];
    if (!m.is_object() || !m.contains("ids") || !m["ids"].is_array())
      throw bad(kApi, fmt::format("'{}' must be an object with 'ids' (an array of adapter ids)", key),
                key);
    for (const auto& item : m.items())
      if (item.key() != "ids" && item.key() != "weights" && item.key() != "merge_strategy" &&
          item.key() != "density" && item.key() != "majority_sign_method")
        throw bad(kApi, fmt::format("unknown field '{}.{}'", key, item.key()), key);
    const json& ids = m["ids"];
    if (ids.empty())
      throw bad(kApi, fmt::format("'{}.ids' must name at least one adapter", key), key);
    const json weights = m.value("weights", json::array());
    if (!weights.is_array() || (!weights.empty() && weights.size() != ids.size()))
      throw bad(kApi, fmt::format("'{}': one weight per adapter id", key), key);
    if (ids.size() > 1)
      throw bad(kApi,
                fmt::format("'{}' with {} adapters is not supported: this server does not merge "
                            "adapters; name one adapter with 'adapter_id'",
                            key, ids.size()),
                key);
    if (!ids[0].is_string())
      throw bad(kApi, fmt::format("'{}.ids' must hold strings", key), key);
    if (!weights.empty() && !(weights[0].is_number() && weights[0].get<double>() == 1.0))
      throw bad(kApi,
                fmt::format("'{}': a weight other than 1 is not supported (adapters are applied "
                            "as trained, not scaled)",
                            key),
                key);
    if (adapter)
      throw bad(kApi, fmt::format("give at most one of 'adapter_id' and '{}'", key), key);
    adapter = ids[0].get<std::string>();
  }
  if (adapter && is_base_model(ctx, *adapter)) return std::nullopt;
  return adapter;
}

// Sampling: LoRAX samples when do_sample is set or a warper is (temperature
// other than 1, top_k, top_p < 1, typical_p < 1); penalties apply either way.
void sampling_of(const json& params, engine::SamplingParams& s) {
  const auto temperature = get_number(params, "temperature", kApi);
  const auto top_k = get_int(params, "top_k", kApi);
  const auto top_p = get_number(params, "top_p", kApi);
  const auto typical_p = get_number(params, "typical_p", kApi);
  const auto repetition = get_number(params, "repetition_penalty", kApi);
  const auto frequency = get_number_in(params, "frequency_penalty", kApi, -2, 2);
  const auto presence = get_number_in(params, "presence_penalty", kApi, -2, 2);
  const bool do_sample = get_bool(params, "do_sample", kApi, false);
  if (temperature && !(*temperature > 0))
    throw bad(kApi, "'temperature' must be strictly positive", "temperature");
  if (top_k && *top_k <= 0) throw bad(kApi, "'top_k' must be strictly positive", "top_k");
  if (top_p && !(*top_p > 0 && *top_p <= 1)) throw bad(kApi, "'top_p' must be in (0, 1]", "top_p");
  if (typical_p && !(*typical_p > 0 && *typical_p <= 1))
    throw bad(kApi, "'typical_p' must be in (0, 1]", "typical_p");
  if (repetition && !(*repetition > 0 && std::isfinite(*repetition)))
    throw bad(kApi, "'repetition_penalty' must be strictly positive", "repetition_penalty");
  s.greedy = !(do_sample || (temperature && *temperature != 1.0) || top_k ||
               (top_p && *top_p < 1.0) || (typical_p && *typical_p < 1.0));
  s.temperature = float(temperature.value_or(1.0));
  s.top_k = top_k.value_or(0);
  s.top_p = float(top_p.value_or(1.0));
  s.typical_p = float(typical_p.value_or(1.0));
  s.repetition_penalty = float(repetition.value_or(1.0));
  s.frequency_penalty = float(frequency.value_or(0.0));
  s.presence_penalty = float(presence.value_or(0.0));
  s.seed = get_seed(params, kApi);  // none: the engine draws one and reports it
}

// A count of tokens per position in [lo, kMaxLogprobs], or 0 when absent.
int32_t count_of(const json& params, const char* name, int64_t lo) {
  const auto v = get_int(params, name, kApi);
  if (!v) return 0;
  if (*v < lo || *v > kMaxLogprobs)
    throw bad(kApi, fmt::format("'{}' must be in [{}, {}]. Given: {}", name, lo,
                                kMaxLogprobs, *v),
              name);
  return int32_t(*v);
}

}  // namespace

LoraxRequest lorax_request(const json& j, const ServerContext& ctx, std::string id,
                           LoraxRoute route) {
  check_fields(j, kApi, kTop, {}, "field");
  if (!j.contains("inputs")) throw bad(kApi, "missing 'inputs'", "inputs");
  LoraxRequest out;
  out.stream = route == LoraxRoute::generate_stream;
  if (present(j, "stream")) {
    const bool stream = get_bool(j, "stream", kApi, false);
    if (route == LoraxRoute::compat)
      out.stream = stream;
    else if (stream != out.stream)
      throw bad(kApi,
                fmt::format("'stream': {} does not fit {} (POST / takes either)", stream,
                            out.stream ? "/generate_stream" : "/generate"),
                "stream");
  }
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  const json& inputs = j["inputs"];
  r.prompt = prompt_ids(ctx, inputs, kApi, "inputs");
  const json params = present(j, "parameters") ? j["parameters"] : json::object();
  if (!params.is_object()) throw bad(kApi, "'parameters' must be an object", "parameters");
  check_fields(params, kApi, kParams, kUnsupported, "parameter");

  r.adapter = adapter_of(params, ctx);
  if (const auto source = get_string(params, "adapter_source", kApi); source && *source != "local")
    throw bad(kApi,
              fmt::format("'adapter_source' '{}' is not supported: this server downloads no "
                          "adapters; 'adapter_id' names a directory in its adapter directory "
                          "('local', the default)",
                          *source),
              "adapter_source");
  if (get_bool(params, "return_full_text", kApi, false))  // the inputs as given, before truncate
    out.full_text_prefix =
        inputs.is_string() ? inputs.get<std::string>()
        : ctx.tokenizer    ? ctx.tokenizer->decode(r.prompt, /*skip_special_tokens=*/false)
                           : std::string();
  if (const auto truncate = get_int(params, "truncate", kApi)) {
    if (*truncate < 1 || *truncate > ctx.limits.input_limit())
      throw bad(kApi,
                fmt::format("'truncate' must be in [1, {}]. Given: {}", ctx.limits.input_limit(),
                            *truncate),
                "truncate");
    if (int64_t(r.prompt.size()) > *truncate)  // keeps the last `truncate` tokens, as TGI
      r.prompt.erase(r.prompt.begin(), r.prompt.end() - *truncate);
  }
  r.max_new_tokens = fit_context(ctx, int64_t(r.prompt.size()),
                                 get_int(params, "max_new_tokens", kApi), kApi, "inputs",
                                 "max_new_tokens");
  sampling_of(params, r.sampling);
  r.stop = stop_strings(params, "stop", ctx, kApi);
  r.ignore_eos = get_bool(params, "ignore_eos_token", kApi, false);
  lorax_constraint(params, ctx, r);

  // best_of: that many candidates, the best (by cumulative logprob) returned,
  // the others in details.best_of_sequences. A given seed is honoured
  // (candidate i draws from seed + i), where LoRAX refuses one.
  const int64_t best_of = get_int(params, "best_of", kApi).value_or(1);
  if (best_of < 1 || best_of > ctx.limits.max_n)
    throw bad(kApi, fmt::format("'best_of' must be in [1, {}]. Given: {}", ctx.limits.max_n, best_of),
              "best_of");
  if (best_of > 1) {
    if (r.sampling.greedy)
      throw bad(kApi,
                "'best_of' > 1 needs sampling (do_sample, or a temperature other than 1, top_k, "
                "top_p or typical_p): greedy candidates are all the same",
                "best_of");
    if (out.stream)
      throw bad(kApi, "'best_of' > 1 is not supported when streaming tokens", "best_of");
    r.best_of = int32_t(best_of);
  }

  out.details = get_bool(params, "details", kApi, false);
  out.decoder_input_details = get_bool(params, "decoder_input_details", kApi, false);
  if (out.decoder_input_details && out.stream)
    throw bad(kApi, "'decoder_input_details' is not supported when streaming tokens",
              "decoder_input_details");
  out.k_alternatives = count_of(params, "return_k_alternatives", 1);
  out.top_n_tokens = count_of(params, "top_n_tokens", 0);
  // LoRAX reports the logprob of every token, of the distribution it was drawn from.
  r.logprobs = std::max(out.k_alternatives, out.top_n_tokens);
  r.logprob_kind = engine::LogprobKind::processed;
  if (out.decoder_input_details) r.prompt_logprobs = 0;
  return out;
}

}  // namespace philora::server
