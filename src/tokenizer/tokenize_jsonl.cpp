#include "tokenizer/tokenize_jsonl.h"

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace philora::tokenizer {

Expected<std::string> tokenize_json_line(const Tokenizer& tokenizer, std::string_view line,
                                         bool add_special_tokens) {
  nlohmann::json in =
      nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (in.is_discarded()) return Status::error("input line is not valid JSON");
  if (!in.is_object()) return Status::error("input line must be a JSON object");
  auto text = in.find("text");
  if (text == in.end() || !text->is_string())
    return Status::error("input line needs a string \"text\"");
  const auto ids = tokenizer.encode(text->get_ref<const std::string&>(), add_special_tokens);
  nlohmann::json out = nlohmann::json::object();
  out["id"] = in.contains("id") ? in["id"] : nlohmann::json();
  out["ids"] = ids;
  out["decoded"] = tokenizer.decode(ids, /*skip_special_tokens=*/false);
  return out.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

}  // namespace philora::tokenizer
