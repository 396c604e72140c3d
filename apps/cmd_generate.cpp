// philora generate: new tokens for every request, one batch, paged-KV decode.
// Sampling and stopping flags set every request's defaults; a request line
// may override them with the field of the same meaning (vLLM's names).
#include <cmath>
#include <iostream>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "io/file.h"
#include "structured/matcher.h"
#include "tokenizer/tokenizer.h"

namespace philora::app {

namespace {

using nlohmann::json;

struct GenerateOptions {
  ModelOptions model;
  std::string requests;
  int64_t max_new_tokens = 16;
  int64_t min_new_tokens = 0;
  bool greedy = false;
  float temperature = 1.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float typical_p = 1.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  uint64_t seed = 0;
  bool seed_given = false;
  bool ignore_eos = false;
  bool stats = false;
  int64_t warmup = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool include_stop_str_in_output = false;
  bool keep_special_tokens = false;
  std::vector<std::string> logit_bias;  // ID=VALUE
  std::vector<std::string> bad_words;   // ID,ID,...
  int32_t logprobs = -1;
  int32_t prompt_logprobs = -1;
  std::string logprob_kind = "raw";
};

// The CLI's finish reasons, OpenAI's words: an eos / stop token id or a stop string is "stop".
const char* finish_name(engine::FinishReason r) {
  return r == engine::FinishReason::eos || r == engine::FinishReason::stop_sequence ? "stop"
                                                                                    : "length";
}

Expected<std::vector<int32_t>> id_list(const std::string& text, const char* flag) {
  std::vector<int32_t> ids;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    try {
      size_t used = 0;
      const std::string item = text.substr(at, comma - at);
      ids.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      return Status::errorf("{} '{}': expected token ids separated by commas", flag, text);
    }
    at = comma + 1;
  }
  return ids;
}

Expected<engine::Request> default_request(const GenerateOptions& o) {
  engine::Request r;
  r.max_new_tokens = o.max_new_tokens;
  r.min_new_tokens = o.min_new_tokens;
  r.ignore_eos = o.ignore_eos;
  engine::SamplingParams& s = r.sampling;
  s.greedy = o.greedy || o.temperature == 0.0f;
  s.temperature = o.temperature;
  s.top_k = o.top_k;
  s.top_p = o.top_p;
  s.min_p = o.min_p;
  s.typical_p = o.typical_p;
  s.repetition_penalty = o.repetition_penalty;
  s.frequency_penalty = o.frequency_penalty;
  s.presence_penalty = o.presence_penalty;
  for (const std::string& b : o.logit_bias) {
    const size_t eq = b.find('=');
    try {
      size_t used_id = 0, used_value = 0;
      const int32_t id = std::stoi(b.substr(0, eq), &used_id);
      const float value = std::stof(b.substr(eq + 1), &used_value);
      if (eq == std::string::npos || used_id != eq || used_value != b.size() - eq - 1)
        throw std::invalid_argument(b);
      s.logit_bias[id] = value;
    } catch (const std::exception&) {
      return Status::errorf("--logit-bias '{}': expected ID=VALUE", b);
    }
  }
  for (const std::string& w : o.bad_words) {
    PHILORA_ASSIGN_OR_RETURN(std::vector<int32_t> ids, id_list(w, "--bad-words"));
    s.bad_words.push_back(std::move(ids));
  }
  r.stop = o.stop;
  r.stop_token_ids = o.stop_token_ids;
  r.include_stop_str_in_output = o.include_stop_str_in_output;
  r.skip_special_tokens = !o.keep_special_tokens;
  if (o.logprobs >= 0) r.logprobs = o.logprobs;
  if (o.prompt_logprobs >= 0) r.prompt_logprobs = o.prompt_logprobs;
  r.logprob_kind =
      o.logprob_kind == "processed" ? engine::LogprobKind::processed : engine::LogprobKind::raw;
  return r;
}

// ---- a request line's own sampling and stopping fields ---------------------------

template <typename T>
Status read_field(const json& j, const char* name, const std::string& where, T& out) {
  if (!j.contains(name) || j[name].is_null()) return Status();
  const json& v = j[name];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return Status::errorf("{}: \"{}\" must be a boolean", where, name);
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) return Status::errorf("{}: \"{}\" must be an integer", where, name);
  } else {
    if (!v.is_number()) return Status::errorf("{}: \"{}\" must be a number", where, name);
  }
  out = v.get<T>();
  return Status();
}

Status read_ids(const json& v, const std::string& where, const char* name,
                std::vector<int32_t>& out) {
  if (!v.is_array()) return Status::errorf("{}: \"{}\" must hold arrays of token ids", where, name);
  out.clear();
  for (const json& t : v) {
    if (!t.is_number_integer())
      return Status::errorf("{}: \"{}\" must hold token ids", where, name);
    out.push_back(t.get<int32_t>());
  }
  return Status();
}

Status line_fields(const json& j, const std::string& where, engine::Request& r) {
  engine::SamplingParams& s = r.sampling;
  if (j.contains("temperature") && !j["temperature"].is_null()) {
    PHILORA_RETURN_IF_ERROR(read_field(j, "temperature", where, s.temperature));
    s.greedy = s.temperature == 0.0f;
  }
  PHILORA_RETURN_IF_ERROR(read_field(j, "greedy", where, s.greedy));
  PHILORA_RETURN_IF_ERROR(read_field(j, "top_k", where, s.top_k));
  PHILORA_RETURN_IF_ERROR(read_field(j, "top_p", where, s.top_p));
  PHILORA_RETURN_IF_ERROR(read_field(j, "min_p", where, s.min_p));
  PHILORA_RETURN_IF_ERROR(read_field(j, "typical_p", where, s.typical_p));
  PHILORA_RETURN_IF_ERROR(read_field(j, "repetition_penalty", where, s.repetition_penalty));
  PHILORA_RETURN_IF_ERROR(read_field(j, "frequency_penalty", where, s.frequency_penalty));
  PHILORA_RETURN_IF_ERROR(read_field(j, "presence_penalty", where, s.presence_penalty));
  if (j.contains("seed") && !j["seed"].is_null()) {
    if (!j["seed"].is_number_unsigned())
      return Status::errorf("{}: \"seed\" must be an integer ≥ 0", where);
    s.seed = j["seed"].get<uint64_t>();
  }
  PHILORA_RETURN_IF_ERROR(read_field(j, "min_new_tokens", where, r.min_new_tokens));
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& v = j["stop"];
    r.stop.clear();
    if (v.is_string()) {
      r.stop.push_back(v.get<std::string>());
    } else if (v.is_array() &&
               std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_string(); })) {
      for (const json& x : v) r.stop.push_back(x.get<std::string>());
    } else {
      return Status::errorf("{}: \"stop\" must be a string or an array of strings", where);
    }
  }
  if (j.contains("stop_token_ids") && !j["stop_token_ids"].is_null())
    PHILORA_RETURN_IF_ERROR(
        read_ids(j["stop_token_ids"], where, "stop_token_ids", r.stop_token_ids));
  PHILORA_RETURN_IF_ERROR(
      read_field(j, "include_stop_str_in_output", where, r.include_stop_str_in_output));
  PHILORA_RETURN_IF_ERROR(read_field(j, "skip_special_tokens", where, r.skip_special_tokens));
  if (j.contains("logit_bias") && !j["logit_bias"].is_null()) {  // OpenAI's {"id": bias}
    const json& v = j["logit_bias"];
    if (!v.is_object())
      return Status::errorf("{}: \"logit_bias\" must be an object {{\"id\": bias}}", where);
    s.logit_bias.clear();
    for (const auto& [key, bias] : v.items()) {
      size_t used = 0;
      int32_t id = -1;
      try {
        id = std::stoi(key, &used);
      } catch (const std::exception&) {
      }
      if (used != key.size() || !bias.is_number())
        return Status::errorf("{}: \"logit_bias\" maps token ids to numbers (\"{}\")", where, key);
      s.logit_bias[id] = bias.get<float>();
    }
  }
  if (j.contains("bad_words_ids") && !j["bad_words_ids"].is_null()) {  // HF's [[ids], ...]
    const json& v = j["bad_words_ids"];
    if (!v.is_array())
      return Status::errorf("{}: \"bad_words_ids\" must be an array of arrays", where);
    s.bad_words.clear();
    for (const json& w : v) {
      std::vector<int32_t> ids;
      PHILORA_RETURN_IF_ERROR(read_ids(w, where, "bad_words_ids", ids));
      s.bad_words.push_back(std::move(ids));
    }
  }
  for (auto [name, dst] :
       {std::pair{"logprobs", &r.logprobs}, std::pair{"prompt_logprobs", &r.prompt_logprobs}}) {
    if (!j.contains(name)) continue;
    if (j[name].is_null()) {
      dst->reset();
      continue;
    }
    if (!j[name].is_number_integer())
      return Status::errorf("{}: \"{}\" must be an integer or null", where, name);
    *dst = j[name].get<int32_t>();
  }
  if (j.contains("logprob_kind") && !j["logprob_kind"].is_null()) {
    const json& v = j["logprob_kind"];
    if (v != "raw" && v != "processed")
      return Status::errorf("{}: \"logprob_kind\" must be \"raw\" or \"processed\"", where);
    r.logprob_kind = v == "processed" ? engine::LogprobKind::processed : engine::LogprobKind::raw;
  }
  return Status();
}

// Structured output on a request line (docs/STRUCTURED.md), as vLLM's extras name it:
// "guided_json" (a schema, or its text), "guided_regex", "guided_grammar" (GBNF),
// "guided_choice" (strings), or "response_format" {"type": "json_object"}; compiled once per
// text through `cache` (null: the model dir has no tokenizer).
Status constraint_fields(const json& j, const std::string& where, structured::ConstraintCache* cache,
                         engine::Request& r) {
  std::vector<std::pair<structured::ConstraintKind, std::string>> asked;
  const char* field = "";
  auto ask = [&](const char* name, structured::ConstraintKind kind, std::string text) {
    asked.emplace_back(kind, std::move(text));
    field = name;
  };
  if (j.contains("guided_json") && !j["guided_json"].is_null()) {
    const json& v = j["guided_json"];
    if (!v.is_object() && !v.is_boolean() && !v.is_string())
      return Status::errorf("{}: \"guided_json\" must be a JSON schema", where);
    ask("guided_json", structured::ConstraintKind::kJsonSchema, v.is_string() ? v.get<std::string>() : v.dump());
  }
  for (const auto& [name, kind] : {std::pair{"guided_regex", structured::ConstraintKind::kRegex},
                                   std::pair{"guided_grammar", structured::ConstraintKind::kGrammar}}) {
    if (!j.contains(name) || j[name].is_null()) continue;
    if (!j[name].is_string()) return Status::errorf("{}: \"{}\" must be a string", where, name);
    ask(name, kind, j[name].get<std::string>());
  }
  if (j.contains("guided_choice") && !j["guided_choice"].is_null())
    ask("guided_choice", structured::ConstraintKind::kChoice, j["guided_choice"].dump());
  if (j.contains("response_format") && !j["response_format"].is_null()) {
    const json& v = j["response_format"];
    if (!v.is_object() || v.value("type", "") != "json_object" || v.size() != 1)
      return Status::errorf("{}: \"response_format\" must be {{\"type\": \"json_object\"}} (a "
                            "schema goes in \"guided_json\")",
                            where);
    ask("response_format", structured::ConstraintKind::kJsonObject, "");
  }
  if (asked.empty()) return Status();
  if (asked.size() > 1) return Status::errorf("{}: give one structured-output constraint", where);
  if (!cache) return Status::errorf("{}: \"{}\" needs the model dir's tokenizer.json", where, field);
  auto c = cache->get(asked[0].first, asked[0].second);
  if (!c) return Status::errorf("{}: \"{}\": {}", where, field, c.status().message());
  r.constraint = *c;
  return Status();
}

// ---- output -----------------------------------------------------------------------

// A logprob as JSON: null for -inf (a token the cuts removed), which JSON cannot hold.
json logprob_json(float lp) { return std::isfinite(lp) ? json(lp) : json(nullptr); }

json position_json(const engine::PositionLogprobs& p) {
  json top = json::array();
  for (const engine::TokenLogprob& t : p.top)
    top.push_back({{"token", t.token}, {"logprob", logprob_json(t.logprob)}});
  return {{"token", p.chosen.token},
          {"logprob", logprob_json(p.chosen.logprob)},
          {"top_logprobs", top}};
}

json output_json(const engine::Request& r, const engine::StepOutput& out,
                 const tokenizer::Tokenizer* tok) {
  json j;
  j["id"] = out.id;
  j["tokens"] = out.new_tokens;
  j["text"] = tok ? json(out.text) : json(nullptr);  // the model dir has no tokenizer
  j["finish_reason"] = finish_name(out.finish);
  // vLLM's stop_reason: the stop string, or the stop / eos token id, that ended it.
  if (out.finish == engine::FinishReason::stop_sequence)
    j["stop_reason"] = out.stop_string;
  else if (out.finish == engine::FinishReason::eos && !out.new_tokens.empty())
    j["stop_reason"] = out.new_tokens.back();
  else
    j["stop_reason"] = nullptr;
  j["seed"] = out.seed;
  if (r.logprobs) {
    j["logprobs"] = json::array();
    for (const engine::PositionLogprobs& p : out.logprobs)
      j["logprobs"].push_back(position_json(p));
  }
  if (r.prompt_logprobs) {  // vLLM's layout: null for the first prompt token
    j["prompt_logprobs"] = json::array({nullptr});
    if (out.prompt_logprobs)
      for (const engine::PositionLogprobs& p : *out.prompt_logprobs)
        j["prompt_logprobs"].push_back(position_json(p));
  }
  return j;
}

int run_generate(const GenerateOptions& o) {
  auto m = load_model(o.model);
  if (!m) return fail(m.status());
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (io::is_regular_file(io::join_path(o.model.model_dir, "tokenizer.json"))) {
    auto t = tokenizer::Tokenizer::from_model_dir(o.model.model_dir);
    if (!t) return fail(t.status());
    tok = std::move(*t);
  }
  auto prompt_ids = [&](const engine::Request& r,
                        const std::string& text) -> Expected<std::vector<int32_t>> {
    if (!r.prompt.empty()) return r.prompt;  // input_ids win
    if (!tok)
      return Status::errorf("request '{}': \"prompt\" needs {}/tokenizer.json; give input_ids",
                            r.id, o.model.model_dir);
    return tok->encode(text, /*add_special_tokens=*/true);
  };
  auto defaults = default_request(o);
  if (!defaults) return fail(defaults.status());
  std::unique_ptr<structured::ConstraintCache> constraints;
  if (tok)
    constraints = std::make_unique<structured::ConstraintCache>(
        structured::TokenVocabulary::from_tokenizer(*tok));
  auto fields = [&](const json& j, const std::string& where, engine::Request& r) -> Status {
    PHILORA_RETURN_IF_ERROR(line_fields(j, where, r));
    return constraint_fields(j, where, constraints.get(), r);
  };
  auto reqs = read_requests(o.requests, *defaults, prompt_ids, fields);
  if (!reqs) return fail(reqs.status());
  for (size_t i = 0; i < reqs->size(); ++i) {
    engine::Request& r = (*reqs)[i];
    if (!r.sampling.seed && o.seed_given)
      r.sampling.seed = o.seed + i;  // else the engine draws one
    if (!tok && !r.stop.empty())
      return fail(Status::errorf("request '{}': stop strings need {}/tokenizer.json", r.id,
                                 o.model.model_dir));
  }
  engine::OfflineOptions opts;
  opts.page_size = o.model.page_size;
  opts.step_graphs = !o.model.enforce_eager;
  opts.prefix_cache = o.model.prefix_cache;
  opts.speculate_ngram = o.model.speculate_ngram;
  opts.speculate_medusa = o.model.speculate_medusa;
  opts.speculate_paths = o.model.speculate_paths;
  opts.speculate_row_cost = o.model.speculate_row_cost;
  opts.medusa = m->medusa;
  opts.tokenizer = tok.get();
  opts.warmup = o.warmup;
  engine::EngineStats stats;
  double seconds = 0;
  if (o.stats) {
    opts.stats = &stats;
    opts.seconds = &seconds;
  }
  auto outs = engine::run_offline(*m->model, m->store.get(), *reqs, opts);
  if (!outs) return fail(outs.status());
  for (size_t i = 0; i < outs->size(); ++i)
    std::cout << output_json((*reqs)[i], (*outs)[i], tok.get()).dump() << "\n";
  std::cout.flush();
  if (o.stats) {
    int64_t generated = 0;
    for (const engine::StepOutput& out : *outs) generated += int64_t(out.new_tokens.size());
    const json j = {{"requests", outs->size()},
                    {"generated_tokens", generated},
                    {"seconds", seconds},
                    {"tokens_per_second", seconds > 0 ? double(generated) / seconds : 0.0},
                    {"steps", stats.steps},
                    {"prompt_tokens_computed", stats.prompt_tokens},
                    {"spec_draft_tokens", stats.spec_draft_tokens},
                    {"spec_accepted_tokens", stats.spec_accepted_tokens},
                    {"spec_eager_heads_steps", stats.spec_eager_heads_steps},
                    {"spec_alt_chains", stats.spec_alt_chains},
                    {"spec_alt_tokens", stats.spec_alt_tokens}};
    std::cerr << j.dump() << "\n";
  }
  return std::cout ? 0 : 1;
}

}  // namespace

void add_generate_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "generate tokens for every request in one batch; a request line may override the sampling "
      "and stopping flags with the same field (temperature, top_k, top_p, min_p, typical_p, "
      "repetition_penalty, frequency_penalty, presence_penalty, seed, min_new_tokens, stop, "
      "stop_token_ids, include_stop_str_in_output, skip_special_tokens, logit_bias {\"id\": bias}, "
      "bad_words_ids [[ids]], logprobs, prompt_logprobs, logprob_kind, greedy)");
  add_model_options(*cmd, o->model);
  cmd->add_option("--requests", o->requests, "JSON lines {id, input_ids, adapter}")->required();
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate per request")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--min-new-tokens", o->min_new_tokens,
                  "no stop condition ends a request before this many tokens (the eos and stop ids "
                  "are banned until then)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_flag("--greedy", o->greedy, "pick the most likely token at each step");
  cmd->add_flag("--stats", o->stats,
                "after the outputs, print one JSON line to stderr: requests, generated tokens, "
                "the seconds from the first step to the last (loading left out), tokens/s, steps, "
                "drafted and accepted tokens");
  cmd->add_option("--warmup", o->warmup,
                  "run the batch this many times first on the same engine (graphs recorded, "
                  "matmul shapes tuned) and output, time and count the run after them (sampled "
                  "requests without a seed then draw other seeds than without --warmup: give "
                  "--seed to compare)")
      ->check(CLI::Range(int64_t(0), int64_t(100)));
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy)")
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", o->top_k, "sample among the k most likely tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", o->min_p,
                  "drop tokens less likely than min_p times the most likely (vLLM)")
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--typical-p", o->typical_p, "locally typical sampling mass (HF; 1 = off)")
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option(
         "--repetition-penalty", o->repetition_penalty,
         "divide (or multiply, when negative) the logits of prompt and output tokens (HF; 1 = off)")
      ->check(CLI::Range(0.01f, 100.0f));
  cmd->add_option("--frequency-penalty", o->frequency_penalty,
                  "subtract this times the count of each output token from its logit (OpenAI)");
  cmd->add_option("--presence-penalty", o->presence_penalty,
                  "subtract this from the logit of every token the output holds (OpenAI)");
  cmd->add_option("--logit-bias", o->logit_bias, "ID=VALUE added to a token's logit (repeatable)");
  cmd->add_option("--bad-words", o->bad_words,
                  "ID,ID,... token ids never to generate in this order (repeatable)");
  auto* seed = cmd->add_option("--seed", o->seed,
                               "sampling seed: request i uses seed + i (default: each request "
                               "draws one; the output reports it)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at the model's eos tokens");
  cmd->add_option("--stop", o->stop, "a stop string (repeatable; needs the model dir's tokenizer)");
  cmd->add_option("--stop-token-id", o->stop_token_ids,
                  "a token id that ends a request (repeatable)");
  cmd->add_flag("--include-stop-str-in-output", o->include_stop_str_in_output,
                "keep the stop string (or stop token's text) at the end of the text");
  cmd->add_flag("--keep-special-tokens", o->keep_special_tokens,
                "the text shows special tokens (default: skipped)");
  cmd->add_option("--logprobs", o->logprobs,
                  "report each new token's logprob and the K most likely tokens' (0..20)")
      ->check(CLI::Range(0, 20));
  cmd->add_option("--prompt-logprobs", o->prompt_logprobs,
                  "report each prompt token's logprob and the K most likely tokens' (0..20)")
      ->check(CLI::Range(0, 20));
  cmd->add_option("--logprob-kind", o->logprob_kind,
                  "raw: the model's (vLLM, OpenAI); processed: after penalties, temperature and "
                  "cuts, the distribution the token was drawn from (LoRAX)")
      ->check(CLI::IsMember({"raw", "processed"}));
  cmd->callback([o, seed, &rc] {
    o->seed_given = seed->count() > 0;
    rc = run_generate(*o);
  });
}

}  // namespace philora::app
