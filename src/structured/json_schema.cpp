#include "structured/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "structured/regex.h"

namespace philora::structured {

namespace {

using Json = nlohmann::ordered_json;  // keeps the schema's property order

constexpr int kMaxDepth = 64;         // nesting of schemas (not counting $ref)
constexpr size_t kInlineLimit = 200;  // larger values become rules of their own
constexpr int kMaxNumberFraction = 6;

// Formats as regexes (RFC 3339 dates and times; each a subset of what ajv-formats accepts:
// no leap seconds, "T" and "Z" upper case).
const std::map<std::string, std::string>& format_regexes() {
  static const std::map<std::string, std::string> kFormats = [] {
    const std::string md =
        "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|"
        "02-(?:0[1-9]|1\\d|2[0-8]))";
    const std::string leap = "(?:\\d\\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29";
    const std::string date = "(?:\\d{4}-" + md + "|" + leap + ")";
    const std::string time =
        "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d{1,9})?(?:Z|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)";
    const std::string label = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    const std::string atext = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+";
    const std::string octet = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
    return std::map<std::string, std::string>{
        {"date", date},
        {"time", time},
        {"date-time", date + "T" + time},
        {"email", atext + "(?:\\." + atext + ")*@(?:" + label + "\\.)+" + label},
        {"uuid", "[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"},
        {"ipv4", "(?:" + octet + "\\.){3}" + octet},
    };
  }();
  return kFormats;
}

// Code points a JSON string holds without escaping.
CodePointSet unescaped_set() { return complement(normalized({{0, 0x1F}, {'"', '"'}, {'\\', '\\'}})); }

Expr json_char() {
  const Expr hex = Expr::cls(normalized({{'0', '9'}, {'a', 'f'}, {'A', 'F'}}));
  // \uXXXX except surrogates (a lone one is not a character; pairs are not generated).
  const Expr u = Expr::alt({
      Expr::seq({Expr::cls(normalized({{'0', '9'}, {'a', 'c'}, {'A', 'C'}, {'e', 'f'}, {'E', 'F'}})), hex, hex, hex}),
      Expr::seq({Expr::cls({{'d', 'd'}, {'D', 'D'}}), Expr::cls({{'0', '7'}}), hex, hex}),
  });
  const Expr escape = Expr::seq({Expr::lit("\\"), Expr::alt({Expr::cls(normalized({{'"', '"'}, {'\\', '\\'}, {'/', '/'},
                                                                                   {'b', 'b'}, {'f', 'f'}, {'n', 'n'},
                                                                                   {'r', 'r'}, {'t', 't'}})),
                                                              Expr::seq({Expr::lit("u"), u})})});
  return Expr::alt({Expr::cls(unescaped_set()), escape});
}

Expr json_string(int min_len = 0, int max_len = -1) {
  return Expr::seq({Expr::lit("\""), Expr::repeat(json_char(), min_len, max_len), Expr::lit("\"")});
}

Expr json_number() {
  const Expr digit = Expr::cls({{'0', '9'}});
  return Expr::seq({
      Expr::opt(Expr::lit("-")),
      Expr::alt({Expr::lit("0"), Expr::seq({Expr::cls({{'1', '9'}}), Expr::star(digit)})}),
      Expr::opt(Expr::seq({Expr::lit("."), Expr::repeat(digit, 1, -1)})),
      Expr::opt(Expr::seq({Expr::cls({{'e', 'e'}, {'E', 'E'}}), Expr::opt(Expr::cls({{'+', '+'}, {'-', '-'}})),
                           Expr::repeat(digit, 1, -1)})),
  });
}

Expr json_integer() {
  return Expr::seq({Expr::opt(Expr::lit("-")),
                    Expr::alt({Expr::lit("0"), Expr::seq({Expr::cls({{'1', '9'}}), Expr::star(Expr::cls({{'0', '9'}}))})})});
}

class SchemaCompiler {
 public:
  SchemaCompiler(const Json& root, const JsonOptions& opts) : root_(root), opts_(opts) {}

  Expected<Grammar> run() {
    const int root_rule = g_.add_rule("root");
    g_.root = root_rule;
    PHILORA_ASSIGN_OR_RETURN(Expr v, value(root_, 0, "#"));
    g_.rules[root_rule].body = Expr::seq({ws(), std::move(v), ws()});
    // $ref targets, compiled once each (they may add more).
    while (!pending_.empty()) {
      auto [rule, ptr] = pending_.back();
      pending_.pop_back();
      PHILORA_ASSIGN_OR_RETURN(const Json* target, resolve(ptr));
      PHILORA_ASSIGN_OR_RETURN(Expr body, value(*target, 0, ptr));
      g_.rules[rule].body = std::move(body);
    }
    return std::move(g_);
  }

  // The generic JSON value rule (any value), made on first use.
  int any_value_rule() {
    if (any_rule_ >= 0) return any_rule_;
    any_rule_ = g_.add_rule("json-value");
    const Expr v = Expr::ref(any_rule_);
    const Expr member = Expr::seq({json_string(), ws(), Expr::lit(":"), ws(), v});
    const Expr object = Expr::seq({Expr::lit("{"), ws(),
                                   Expr::opt(Expr::seq({member, Expr::star(Expr::seq({ws(), Expr::lit(","), ws(), member}))})),
                                   ws(), Expr::lit("}")});
    const Expr array = Expr::seq({Expr::lit("["), ws(),
                                  Expr::opt(Expr::seq({v, Expr::star(Expr::seq({ws(), Expr::lit(","), ws(), v}))})), ws(),
                                  Expr::lit("]")});
    g_.rules[any_rule_].body = Expr::alt({object, array, json_string(), json_number(), Expr::lit("true"),
                                          Expr::lit("false"), Expr::lit("null")});
    return any_rule_;
  }

  Expr ws() const {
    if (opts_.max_whitespace <= 0) return Expr::empty();
    return Expr::repeat(Expr::cls(normalized({{' ', ' '}, {'\t', '\t'}, {'\n', '\n'}, {'\r', '\r'}})), 0,
                        opts_.max_whitespace);
  }

  Grammar& grammar() { return g_; }

 private:
  static Status error(const std::string& where, const std::string& what) {
    return Status::errorf("JSON schema at {}: {}", where, what);
  }

  Expected<const Json*> resolve(const std::string& ref) {
    if (ref.empty() || ref[0] != '#') return error(ref, "only $ref within the document (\"#...\") is supported");
    const Json* cur = &root_;
    std::string path = ref.substr(1);
    if (!path.empty() && path[0] != '/') return error(ref, "$ref must be a JSON pointer (\"#/$defs/name\")");
    size_t pos = 0;
    while (pos < path.size()) {
      const size_t next = path.find('/', pos + 1);
      std::string token = path.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
      std::string decoded;
      for (size_t i = 0; i < token.size(); ++i) {
        if (token[i] == '~' && i + 1 < token.size() && (token[i + 1] == '0' || token[i + 1] == '1')) {
          decoded.push_back(token[i + 1] == '0' ? '~' : '/');
          ++i;
        } else {
          decoded.push_back(token[i]);
        }
      }
      if (cur->is_object() && cur->contains(decoded)) {
        cur = &(*cur)[decoded];
      } else if (cur->is_array() && !decoded.empty() &&
                 decoded.find_first_not_of("0123456789") == std::string::npos && decoded.size() < 9 &&
                 std::stoul(decoded) < cur->size()) {
        cur = &(*cur)[std::stoul(decoded)];
      } else {
        return error(ref, "$ref target not found");
      }
      if (next == std::string::npos) break;
      pos = next;
    }
    return cur;
  }

  int ref_rule(const std::string& ref) {
    auto it = ref_rules_.find(ref);
    if (it != ref_rules_.end()) return it->second;
    const int r = g_.add_rule("ref " + ref);
    ref_rules_.emplace(ref, r);
    pending_.emplace_back(r, ref);
    return r;
  }

  // Large expressions used more than once become rules (the NFA stays small).
  Expr shared(Expr e, const std::string& name) {
    if (expr_size(e) <= kInlineLimit) return e;
    const int r = g_.add_rule(name);
    g_.rules[r].body = std::move(e);
    return Expr::ref(r);
  }

  Expected<Expr> value(const Json& s, int depth, const std::string& where) {
    if (depth > kMaxDepth) return error(where, fmt::format("schemas nested more than {} deep", kMaxDepth));
    if (s.is_boolean()) {
      if (s.get<bool>()) return Expr::ref(any_value_rule());
      return error(where, "the schema false admits no value");
    }
    if (!s.is_object()) return error(where, "a schema must be an object or a boolean");
    static const std::set<std::string> kAnnotations = {
        "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
        "readOnly", "writeOnly", "$defs", "definitions", "strict", "name", "$anchor", "discriminator"};
    static const std::set<std::string> kHandled = {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "nullable", "properties", "required",
        "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "uniqueItems"};
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (!kAnnotations.count(it.key()) && !kHandled.count(it.key())) {
        return error(where, fmt::format("keyword {:?} is not supported", it.key()));
      }
    }
    if (s.contains("uniqueItems") && s["uniqueItems"] == true) {
      return error(where, "keyword \"uniqueItems\": true is not supported");
    }
    Expr e;
    PHILORA_ASSIGN_OR_RETURN(e, value_without_nullable(s, depth, where));
    if (s.contains("nullable") && s["nullable"] == true) e = Expr::alt({std::move(e), Expr::lit("null")});
    return e;
  }

  Expected<Expr> value_without_nullable(const Json& s, int depth, const std::string& where) {
    if (s.contains("$ref")) {
      for (auto it = s.begin(); it != s.end(); ++it) {
        static const std::set<std::string> kBeside = {"$ref", "title", "description", "$defs", "definitions",
                                                      "$comment", "default", "examples", "nullable", "$schema", "$id"};
        if (!kBeside.count(it.key())) return error(where, fmt::format("keyword {:?} beside $ref is not supported", it.key()));
      }
      if (!s["$ref"].is_string()) return error(where, "$ref must be a string");
      return Expr::ref(ref_rule(s["$ref"].get<std::string>()));
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      const Json& list = s[key];
      if (!list.is_array() || list.empty()) return error(where, fmt::format("{} must be a non-empty array", key));
      // The other keywords of this schema apply to every branch.
      Json rest = s;
      rest.erase(key);
      std::vector<Expr> alts;
      for (size_t i = 0; i < list.size(); ++i) {
        Json branch = list[i];
        if (branch.is_object()) {
          static const std::set<std::string> kSkip = {"$defs", "definitions", "description", "title",
                                                      "$comment", "$schema", "$id", "examples", "default"};
          for (auto it = rest.begin(); it != rest.end(); ++it) {
            if (kSkip.count(it.key())) continue;
            if (branch.contains(it.key())) {
              return error(where, fmt::format("keyword {:?} both beside {} and inside a branch is not supported", it.key(), key));
            }
            branch[it.key()] = it.value();
          }
        }
        PHILORA_ASSIGN_OR_RETURN(Expr a, value(branch, depth + 1, fmt::format("{}/{}/{}", where, key, i)));
        alts.push_back(std::move(a));
      }
      return Expr::alt(std::move(alts));
    }
    if (s.contains("allOf")) {
      const Json& list = s["allOf"];
      if (!list.is_array() || list.size() != 1) return error(where, "allOf is supported with exactly one schema");
      Json rest = s;
      rest.erase("allOf");
      if (rest.contains("$defs")) rest.erase("$defs");
      if (rest.contains("definitions")) rest.erase("definitions");
      bool only_annotations = true;
      for (auto it = rest.begin(); it != rest.end(); ++it) {
        if (it.key() != "title" && it.key() != "description" && it.key() != "$comment") only_annotations = false;
      }
      if (!only_annotations) return error(where, "keywords beside allOf are not supported");
      return value(list[0], depth + 1, where + "/allOf/0");
    }
    if (s.contains("const")) return Expr::lit(s["const"].dump());
    std::set<std::string> types;
    if (s.contains("type")) {
      const Json& t = s["type"];
      if (t.is_string()) {
        types.insert(t.get<std::string>());
      } else if (t.is_array() && !t.empty()) {
        for (const Json& x : t) {
          if (!x.is_string()) return error(where, "type must be a string or an array of strings");
          types.insert(x.get<std::string>());
        }
      } else {
        return error(where, "type must be a string or an array of strings");
      }
      for (const std::string& x : types) {
        static const std::set<std::string> kTypes = {"object", "array", "string", "integer", "number", "boolean", "null"};
        if (!kTypes.count(x)) return error(where, fmt::format("unknown type {:?}", x));
      }
    }
    if (s.contains("enum")) {
      const Json& list = s["enum"];
      if (!list.is_array() || list.empty()) return error(where, "enum must be a non-empty array");
      std::vector<Expr> alts;
      for (const Json& v : list) {
        if (!types.empty() && !types.count(json_type(v)) && !(json_type(v) == "integer" && types.count("number"))) continue;
        alts.push_back(Expr::lit(v.dump()));
      }
      if (alts.empty()) return error(where, "no enum value has the schema's type");
      return Expr::alt(std::move(alts));
    }
    if (types.empty()) {
      // No type: inferred from the keywords, or any value.
      if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) types.insert("object");
      if (s.contains("items") || s.contains("prefixItems") || s.contains("minItems") || s.contains("maxItems")) types.insert("array");
      if (s.contains("pattern") || s.contains("format") || s.contains("minLength") || s.contains("maxLength")) types.insert("string");
      if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") || s.contains("exclusiveMaximum")) types.insert("number");
      if (types.empty()) return Expr::ref(any_value_rule());
    }
    std::vector<Expr> alts;
    for (const std::string& t : types) {
      Expr e;
      if (t == "object") {
        PHILORA_ASSIGN_OR_RETURN(e, object(s, depth, where));
      } else if (t == "array") {
        PHILORA_ASSIGN_OR_RETURN(e, array(s, depth, where));
      } else if (t == "string") {
        PHILORA_ASSIGN_OR_RETURN(e, string(s, where));
      } else if (t == "integer") {
        PHILORA_ASSIGN_OR_RETURN(e, integer(s, where));
      } else if (t == "number") {
        if (types.count("integer")) continue;  // number covers integers; keep the integer bounds exact
        PHILORA_ASSIGN_OR_RETURN(e, number(s, where));
      } else if (t == "boolean") {
        e = Expr::alt({Expr::lit("true"), Expr::lit("false")});
      } else {
        e = Expr::lit("null");
      }
      alts.push_back(std::move(e));
    }
    if (types.count("integer") && types.count("number")) {
      // Both: a number (its bounds hold for integers as well).
      Expr e;
      PHILORA_ASSIGN_OR_RETURN(e, number(s, where));
      alts.push_back(std::move(e));
    }
    return alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
  }

  static std::string json_type(const Json& v) {
    if (v.is_object()) return "object";
    if (v.is_array()) return "array";
    if (v.is_string()) return "string";
    if (v.is_boolean()) return "boolean";
    if (v.is_null()) return "null";
    if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
    if (v.is_number_float()) return std::floor(v.get<double>()) == v.get<double>() ? "integer" : "number";
    return "?";
  }

  Expected<int> count(const Json& s, const char* key, const std::string& where, int dflt) {
    if (!s.contains(key)) return dflt;
    const Json& v = s[key];
    if (!v.is_number_integer() && !v.is_number_unsigned()) return error(where, fmt::format("{} must be a non-negative integer", key));
    const int64_t n = v.get<int64_t>();
    if (n < 0) return error(where, fmt::format("{} must be a non-negative integer", key));
    if (n > 1000) return error(where, fmt::format("{} above 1000 is not supported", key));
    return static_cast<int>(n);
  }

  Expected<Expr> object(const Json& s, int depth, const std::string& where) {
    const Expr open = Expr::seq({Expr::lit("{"), ws()});
    const Expr close = Expr::seq({ws(), Expr::lit("}")});
    const Expr comma = Expr::seq({ws(), Expr::lit(","), ws()});
    std::vector<std::string> names;
    std::vector<const Json*> schemas;
    static const Json kAny = true;
    if (s.contains("properties")) {
      if (!s["properties"].is_object()) return error(where, "properties must be an object");
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) {
        names.push_back(it.key());
        schemas.push_back(&it.value());
      }
    }
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) return error(where, "required must be an array");
      for (const Json& r : s["required"]) {
        if (!r.is_string()) return error(where, "required must list strings");
        required.insert(r.get<std::string>());
        if (std::find(names.begin(), names.end(), r.get<std::string>()) == names.end()) {
          names.push_back(r.get<std::string>());  // required but not described: any value
          schemas.push_back(&kAny);
        }
      }
    }
    const Json* additional = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    if (names.empty()) {
      if (additional && additional->is_boolean() && !additional->get<bool>()) return Expr::seq({open, close});
      // A map: any keys, values of the additionalProperties schema (any value when absent).
      Expr v;
      if (additional && !additional->is_boolean()) {
        PHILORA_ASSIGN_OR_RETURN(v, value(*additional, depth + 1, where + "/additionalProperties"));
      } else {
        v = Expr::ref(any_value_rule());
      }
      v = shared(std::move(v), "map value " + where);
      const Expr member = Expr::seq({json_string(), ws(), Expr::lit(":"), ws(), v});
      return Expr::seq({open, Expr::opt(Expr::seq({member, Expr::star(Expr::seq({comma, member}))})), close});
    }
    // Properties in schema order; only those listed (strict mode).
    std::vector<Expr> members;
    std::vector<bool> req;
    for (size_t i = 0; i < names.size(); ++i) {
      PHILORA_ASSIGN_OR_RETURN(Expr v, value(*schemas[i], depth + 1, where + "/properties/" + names[i]));
      v = shared(std::move(v), "property " + where + "/" + names[i]);
      members.push_back(Expr::seq({Expr::lit(Json(names[i]).dump()), ws(), Expr::lit(":"), ws(), std::move(v)}));
      req.push_back(required.count(names[i]) > 0);
    }
    const size_t n = names.size();
    // rest(i): properties i.. each after a comma; the optional ones may be left out.
    auto rest = [&](size_t i) {
      std::vector<Expr> items;
      for (size_t m = i; m < n; ++m) {
        Expr x = Expr::seq({comma, members[m]});
        items.push_back(req[m] ? std::move(x) : Expr::opt(std::move(x)));
      }
      return Expr::seq(std::move(items));
    };
    // The first property written is j: every one before it is optional.
    std::vector<Expr> firsts;
    bool all_optional = true;
    for (size_t j = 0; j < n; ++j) {
      firsts.push_back(Expr::seq({members[j], rest(j + 1)}));
      if (req[j]) {
        all_optional = false;
        break;
      }
    }
    if (all_optional) firsts.push_back(Expr::empty());
    return Expr::seq({open, Expr::alt(std::move(firsts)), close});
  }

  Expected<Expr> array(const Json& s, int depth, const std::string& where) {
    PHILORA_ASSIGN_OR_RETURN(int min, count(s, "minItems", where, 0));
    PHILORA_ASSIGN_OR_RETURN(int max, count(s, "maxItems", where, -1));
    if (max >= 0 && max < min) return error(where, "maxItems below minItems");
    const Expr open = Expr::seq({Expr::lit("["), ws()});
    const Expr close = Expr::seq({ws(), Expr::lit("]")});
    const Expr comma = Expr::seq({ws(), Expr::lit(","), ws()});
    if (s.contains("prefixItems")) {
      const Json& prefix = s["prefixItems"];
      if (!prefix.is_array()) return error(where, "prefixItems must be an array");
      if (s.contains("items") && !(s["items"].is_boolean() && !s["items"].get<bool>())) {
        return error(where, "prefixItems is supported with items: false (or no items) only");
      }
      const int k = static_cast<int>(prefix.size());
      const int hi = max < 0 ? k : std::min(max, k);
      if (min > hi) return error(where, "minItems above the number of prefixItems");
      std::vector<Expr> elems;
      for (int i = 0; i < k; ++i) {
        PHILORA_ASSIGN_OR_RETURN(Expr v, value(prefix[i], depth + 1, fmt::format("{}/prefixItems/{}", where, i)));
        elems.push_back(std::move(v));
      }
      // Elements 0..hi-1, the first `min` required: e0 (, e1 (, e2 ...)?)? nested from the end.
      Expr tail = Expr::empty();
      for (int i = hi - 1; i >= 1; --i) {
        Expr x = Expr::seq({comma, elems[i], tail});
        tail = i < min ? std::move(x) : Expr::opt(std::move(x));
      }
      if (hi == 0) return Expr::seq({open, close});
      Expr body = Expr::seq({elems[0], tail});
      return Expr::seq({open, min > 0 ? std::move(body) : Expr::opt(std::move(body)), close});
    }
    Expr item;
    if (s.contains("items")) {
      if (s["items"].is_boolean() && !s["items"].get<bool>()) {
        if (min > 0) return error(where, "items: false with minItems above 0");
        return Expr::seq({open, close});
      }
      PHILORA_ASSIGN_OR_RETURN(item, value(s["items"], depth + 1, where + "/items"));
    } else {
      item = Expr::ref(any_value_rule());
    }
    if (max == 0) return Expr::seq({open, close});
    item = shared(std::move(item), "items " + where);
    Expr body = Expr::seq({item, Expr::repeat(Expr::seq({comma, item}), std::max(min - 1, 0), max < 0 ? -1 : max - 1)});
    return Expr::seq({open, min > 0 ? std::move(body) : Expr::opt(std::move(body)), close});
  }

  Expected<Expr> string(const Json& s, const std::string& where) {
    PHILORA_ASSIGN_OR_RETURN(int min, count(s, "minLength", where, 0));
    PHILORA_ASSIGN_OR_RETURN(int max, count(s, "maxLength", where, -1));
    if (max >= 0 && max < min) return error(where, "maxLength below minLength");
    const bool has_len = s.contains("minLength") || s.contains("maxLength");
    const bool has_pattern = s.contains("pattern");
    const bool has_format = s.contains("format");
    if ((has_pattern && has_format) || (has_len && (has_pattern || has_format))) {
      return error(where, "only one of pattern, format and minLength/maxLength per string is supported");
    }
    std::string regex;
    if (has_pattern) {
      if (!s["pattern"].is_string()) return error(where, "pattern must be a string");
      regex = s["pattern"].get<std::string>();
    } else if (has_format) {
      if (!s["format"].is_string()) return error(where, "format must be a string");
      const std::string f = s["format"].get<std::string>();
      auto it = format_regexes().find(f);
      if (it == format_regexes().end()) {
        return error(where, fmt::format("format {:?} is not supported (supported: date, time, date-time, email, uuid, ipv4)", f));
      }
      regex = "^" + it->second + "$";
    } else {
      return json_string(min, max);
    }
    // The value is matched as written: no escapes inside a patterned string, so its characters
    // are the value's (docs/STRUCTURED.md).
    auto e = regex_expr(regex, RegexMatch::kSearch, unescaped_set());
    if (!e.ok()) return error(where, e.status().message());
    return Expr::seq({Expr::lit("\""), std::move(*e), Expr::lit("\"")});
  }

  // A bound as a decimal string (nullopt when absent); integers keep every digit.
  Expected<std::optional<DecimalBound>> bound(const Json& s, const char* inclusive, const char* exclusive,
                                              const std::string& where) {
    std::optional<DecimalBound> out;
    auto text = [&](const Json& v) -> Expected<std::string> {
      if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
      if (!v.is_number_float()) return error(where, fmt::format("{} must be a number", inclusive));
      const double d = v.get<double>();
      if (!std::isfinite(d) || std::fabs(d) >= 1e9) return error(where, "number bounds beyond 1e9 in magnitude are not supported");
      std::string t = fmt::format("{}", d);  // shortest form that reads back as d
      if (t.find('e') != std::string::npos) t = fmt::format("{:.17f}", d);
      return t;
    };
    if (s.contains(inclusive)) {
      PHILORA_ASSIGN_OR_RETURN(std::string t, text(s[inclusive]));
      out = DecimalBound{t, false};
    }
    if (s.contains(exclusive)) {
      const Json& v = s[exclusive];
      if (v.is_boolean()) {  // draft 4: a flag on the inclusive keyword
        if (v.get<bool>() && out) out->strict = true;
      } else {
        PHILORA_ASSIGN_OR_RETURN(std::string t, text(v));
        if (out) return error(where, fmt::format("both {} and {} are not supported", inclusive, exclusive));
        out = DecimalBound{t, true};
      }
    }
    return out;
  }

  Expected<Expr> integer(const Json& s, const std::string& where) {
    PHILORA_ASSIGN_OR_RETURN(auto lo, bound(s, "minimum", "exclusiveMinimum", where));
    PHILORA_ASSIGN_OR_RETURN(auto hi, bound(s, "maximum", "exclusiveMaximum", where));
    if (!lo && !hi) return json_integer();
    auto to_int = [&](const DecimalBound& b, bool lower) -> Expected<int64_t> {
      const long double v = std::strtold(b.value.c_str(), nullptr);
      if (std::fabs(v) > 9.0e18L) return error(where, "integer bound out of range");
      long double r = lower ? std::ceil(v) : std::floor(v);
      if (b.strict && r == v) r += lower ? 1 : -1;
      return static_cast<int64_t>(r);
    };
    std::optional<int64_t> l, h;
    if (lo) {
      PHILORA_ASSIGN_OR_RETURN(l, to_int(*lo, true));
    }
    if (hi) {
      PHILORA_ASSIGN_OR_RETURN(h, to_int(*hi, false));
    }
    if (l && h && *l > *h) return error(where, "no integer lies within the bounds");
    return integer_range_expr(l, h);
  }

  Expected<Expr> number(const Json& s, const std::string& where) {
    PHILORA_ASSIGN_OR_RETURN(auto lo, bound(s, "minimum", "exclusiveMinimum", where));
    PHILORA_ASSIGN_OR_RETURN(auto hi, bound(s, "maximum", "exclusiveMaximum", where));
    if (!lo && !hi) return json_number();
    auto e = number_range_expr(lo, hi, kMaxNumberFraction);
    if (!e.ok()) return error(where, e.status().message());
    return e;
  }

  const Json& root_;
  const JsonOptions& opts_;
  Grammar g_;
  int any_rule_ = -1;
  std::map<std::string, int> ref_rules_;
  std::vector<std::pair<int, std::string>> pending_;
};

}  // namespace

Expected<Grammar> json_schema_grammar(std::string_view schema, const JsonOptions& opts) {
  Json j;
  try {
    j = Json::parse(schema);
  } catch (const std::exception& e) {
    return Status::errorf("JSON schema: not valid JSON: {}", e.what());
  }
  return SchemaCompiler(j, opts).run();
}

Grammar json_object_grammar(const JsonOptions& opts) {
  const Json schema = {{"type", "object"}};
  SchemaCompiler c(schema, opts);
  auto g = c.run();
  return std::move(*g);
}

}  // namespace philora::structured
