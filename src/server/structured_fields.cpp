// Structured-output fields -> engine::Request::constraint (docs/STRUCTURED.md):
//   LoRAX   parameters.response_format {"type": "json_object" | "json_schema" | "text",
//           "schema": {...}} (LoRAX's shape; a json_schema type may also nest
//           OpenAI's {"json_schema": {"schema": ...}})
//   OpenAI  response_format {"type": "text" | "json_object"} or {"type": "json_schema",
//           "json_schema": {"name", "schema", "strict", "description"}}; vLLM's
//           guided_json, guided_regex, guided_grammar (GBNF), guided_choice
// Every constraint compiles once through the server's ConstraintCache.
#include <fmt/format.h>

#include "server/request_fields.h"

namespace philora::server::fields {

namespace {

struct Asked {
  structured::ConstraintKind kind;
  std::string text;
  std::string param;  // the field it came from, for errors
};

// Compiles the constraint (or finds it in the cache) into the request.
void compile_into(const Asked& a, const ServerContext& ctx, Api api, engine::Request& r) {
  if (!ctx.constraints)
    throw bad(api,
              fmt::format("'{}' is not supported by this server: structured output needs the "
                          "model's tokenizer, which it lacks",
                          a.param),
              a.param);
  auto c = ctx.constraints->get(a.kind, a.text);
  if (!c.ok()) {
    const char* what = a.kind == structured::ConstraintKind::kRegex     ? "regular expression"
                       : a.kind == structured::ConstraintKind::kGrammar ? "grammar"
                       : a.kind == structured::ConstraintKind::kChoice  ? "choice"
                                                                        : "JSON schema";
    throw bad(api, fmt::format("'{}': the {} cannot be used: {}", a.param, what,
                               c.status().message()),
              a.param);
  }
  r.constraint = *c;
}

// A schema given as a JSON value (an object or a boolean), or as its text (vLLM's guided_json).
std::string schema_text(const json& v, Api api, const std::string& param, bool text_too) {
  if (v.is_object() || v.is_boolean()) return v.dump();
  if (text_too && v.is_string()) return v.get<std::string>();
  throw bad(api, fmt::format("'{}' must be a JSON schema (an object)", param), param);
}

std::string type_of(const json& rf, Api api, const std::string& param) {
  if (!rf.is_object()) throw bad(api, fmt::format("'{}' must be an object", param), param);
  if (!rf.contains("type") || !rf["type"].is_string())
    throw bad(api, fmt::format("'{}' needs a 'type' (\"text\", \"json_object\" or \"json_schema\")", param),
              param);
  return rf["type"].get<std::string>();
}

}  // namespace

void lorax_constraint(const json& params, const ServerContext& ctx, engine::Request& r) {
  constexpr Api api = Api::lorax;
  if (!present(params, "response_format")) return;
  const json& rf = params["response_format"];
  const std::string param = "response_format";
  const std::string type = type_of(rf, api, param);
  for (const auto& item : rf.items())
    if (item.key() != "type" && item.key() != "schema" && item.key() != "json_schema")
      throw bad(api, fmt::format("unknown field '{}.{}'", param, item.key()), param);
  if (type == "text") {
    if (present(rf, "schema") || present(rf, "json_schema"))
      throw bad(api, "'response_format' of type \"text\" takes no schema", param);
    return;
  }
  if (type != "json_object" && type != "json_schema")
    throw bad(api,
              fmt::format("'response_format.type' must be \"json_object\", \"json_schema\" or "
                          "\"text\" (got \"{}\")",
                          type),
              param);
  const json* schema = present(rf, "schema") ? &rf["schema"] : nullptr;
  if (present(rf, "json_schema")) {
    const json& js = rf["json_schema"];
    if (type != "json_schema" || !js.is_object() || !present(js, "schema") || schema)
      throw bad(api,
                "'response_format.json_schema' must be an object with 'schema', with type "
                "\"json_schema\" and no 'schema' beside it",
                param);
    schema = &js["schema"];
  }
  // No schema: any JSON object (LoRAX's default schema is an object of any values).
  if (!schema) return compile_into({structured::ConstraintKind::kJsonObject, "", param}, ctx, api, r);
  compile_into({structured::ConstraintKind::kJsonSchema, schema_text(*schema, api, param + ".schema", false),
                param + ".schema"},
               ctx, api, r);
}

void openai_constraint(const json& j, const ServerContext& ctx, engine::Request& r) {
  constexpr Api api = Api::openai;
  std::vector<Asked> asked;
  if (present(j, "response_format")) {
    const json& rf = j["response_format"];
    const std::string type = type_of(rf, api, "response_format");
    for (const auto& item : rf.items())
      if (item.key() != "type" && item.key() != "json_schema")
        throw bad(api, fmt::format("unknown field 'response_format.{}'", item.key()),
                  "response_format");
    if (type == "json_object") {
      asked.push_back({structured::ConstraintKind::kJsonObject, "", "response_format"});
    } else if (type == "json_schema") {
      if (!present(rf, "json_schema") || !rf["json_schema"].is_object())
        throw bad(api, "'response_format.json_schema' is required with type \"json_schema\"",
                  "response_format");
      const json& js = rf["json_schema"];
      for (const auto& item : js.items())
        if (item.key() != "name" && item.key() != "schema" && item.key() != "strict" &&
            item.key() != "description")
          throw bad(api, fmt::format("unknown field 'response_format.json_schema.{}'", item.key()),
                    "response_format");
      if (!js.contains("name") || !js["name"].is_string() ||
          js["name"].get_ref<const std::string&>().empty() ||
          js["name"].get_ref<const std::string&>().size() > 64)
        throw bad(api, "'response_format.json_schema.name' must be a string of 1 to 64 characters",
                  "response_format");
      if (present(js, "strict") && !js["strict"].is_boolean())
        throw bad(api, "'response_format.json_schema.strict' must be a boolean", "response_format");
      if (present(js, "description") && !js["description"].is_string())
        throw bad(api, "'response_format.json_schema.description' must be a string",
                  "response_format");
      // strict or not, the schema is enforced (as vLLM does); without one, any JSON object.
      if (!present(js, "schema"))
        asked.push_back({structured::ConstraintKind::kJsonObject, "", "response_format"});
      else
        asked.push_back({structured::ConstraintKind::kJsonSchema,
                         schema_text(js["schema"], api, "response_format.json_schema.schema", false),
                         "response_format"});
    } else if (type != "text") {
      throw bad(api,
                fmt::format("'response_format.type' must be \"text\", \"json_object\" or "
                            "\"json_schema\" (got \"{}\")",
                            type),
                "response_format");
    }
  }
  if (present(j, "guided_json"))
    asked.push_back({structured::ConstraintKind::kJsonSchema,
                     schema_text(j["guided_json"], api, "guided_json", true), "guided_json"});
  for (const auto& [name, kind] :
       {std::pair{"guided_regex", structured::ConstraintKind::kRegex},
        std::pair{"guided_grammar", structured::ConstraintKind::kGrammar}}) {
    if (!present(j, name)) continue;
    if (!j[name].is_string()) throw bad(api, fmt::format("'{}' must be a string", name), name);
    asked.push_back({kind, j[name].get<std::string>(), name});
  }
  if (present(j, "guided_choice")) {
    const json& c = j["guided_choice"];
    bool ok = c.is_array() && !c.empty();
    for (const json& s : c) ok = ok && s.is_string();
    if (!ok) throw bad(api, "'guided_choice' must be a non-empty array of strings", "guided_choice");
    asked.push_back({structured::ConstraintKind::kChoice, c.dump(), "guided_choice"});
  }
  if (asked.empty()) return;
  if (asked.size() > 1)
    throw bad(api,
              fmt::format("give one structured-output constraint: '{}' and '{}' were both given",
                          asked[0].param, asked[1].param),
              asked[1].param);
  compile_into(asked[0], ctx, api, r);
}

}  // namespace philora::server::fields
