// How the request files (request_json.cpp, lorax_request.cpp,
// openai_request.cpp) read a request's JSON: typed optional fields, the
// table of fields each API has, token ids against the vocabulary, stop
// strings and the context. Each reader throws BadRequest naming the field.
// Internal to src/server.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "server/routes.h"

namespace philora::server::fields {

using nlohmann::json;

inline int bad_status(Api api) { return api == Api::openai ? 400 : 422; }

inline BadRequest bad(Api api, std::string message, std::string param = "",
                      const char* code = nullptr) {
  return BadRequest{bad_status(api), std::move(message), std::move(param), code};
}

inline bool present(const json& j, const char* name) {
  return j.contains(name) && !j[name].is_null();
}

bool get_bool(const json& j, const char* name, Api api, bool fallback);
std::optional<std::string> get_string(const json& j, const char* name, Api api);
std::optional<int64_t> get_int(const json& j, const char* name, Api api);
std::optional<double> get_number(const json& j, const char* name, Api api);
// A number in [lo, hi] (the bounds as the message words them).
std::optional<double> get_number_in(const json& j, const char* name, Api api, double lo, double hi);
// A seed: LoRAX's is an unsigned 64-bit integer, OpenAI's (vLLM's) a signed
// one, taken modulo 2^64.
std::optional<uint64_t> get_seed(const json& j, Api api);

// A token id the client gave (a prompt's, a logit_bias key's, a stop id):
// an integer in [0, vocab); `what` names where it stands.
int32_t token_id(const json& v, const ServerContext& ctx, Api api, const std::string& param);

// A field we do not act on: accepted at its neutral value, else refused with `why`.
struct Unsupported {
  const char* name;
  bool (*neutral)(const json&);
  const char* why;
};
inline bool null_only(const json& v) { return v.is_null(); }
inline bool false_or_null(const json& v) { return v.is_null() || v == false; }
inline bool true_or_null(const json& v) { return v.is_null() || v == true; }
inline bool zero_or_null(const json& v) {
  return v.is_null() || (v.is_number() && v.get<double>() == 0.0);
}
inline bool one_or_null(const json& v) {
  return v.is_null() || (v.is_number() && v.get<double>() == 1.0);
}
inline bool empty_or_null(const json& v) {
  return v.is_null() || ((v.is_object() || v.is_array()) && v.empty()) ||
         (v.is_string() && v.get_ref<const std::string&>().empty());
}

// Refuses any field of `j` that is neither in `honoured` nor neutral in
// `unsupported`; `where` words an unknown one for LoRAX ("field", "parameter").
void check_fields(const json& j, Api api, std::span<const char* const> honoured,
                  std::span<const Unsupported> unsupported, const char* where);

// A string or an array of strings, within the server's limits.
std::vector<std::string> stop_strings(const json& j, const char* name, const ServerContext& ctx,
                                      Api api);
// Token ids of a prompt given as text (tokenized with the special tokens) or as ids.
std::vector<int32_t> prompt_ids(const ServerContext& ctx, const json& p, Api api,
                                const char* param);
// Whether a request's model / adapter_id names the base model (empty does too).
bool is_base_model(const ServerContext& ctx, const std::string& name);
// What every request starts from: its id, the tokenizer's stop ids.
engine::Request new_request(const ServerContext& ctx, std::string id);
// The tokens to generate: the request's (checked against the limits and what
// the context leaves), else the default; a prompt over the limit is refused
// as each API words it.
int64_t fit_context(const ServerContext& ctx, int64_t prompt_len, std::optional<int64_t> given,
                    Api api, const char* prompt_param, const char* max_param);

// Structured output (structured_fields.cpp): the constraint a request asks
// for, compiled through ctx.constraints (a constraint that does not compile
// is refused naming the field and the problem). LoRAX: parameters'
// `response_format`; OpenAI: `response_format` and vLLM's guided_* fields.
void lorax_constraint(const json& params, const ServerContext& ctx, engine::Request& r);
void openai_constraint(const json& body, const ServerContext& ctx, engine::Request& r);

}  // namespace philora::server::fields
