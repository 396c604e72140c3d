#include "tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/parser.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::errorf("cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::optional<std::string> config_token(const nlohmann::ordered_json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

Expected<ChatTemplate> ChatTemplate::from_string(std::string source) {
  if (const size_t valid = unicode::valid_prefix_length(source); valid != source.size())
    return Status::errorf("chat template: not valid UTF-8 (at byte {})", valid);
  auto body = jinja::parse(source);
  if (!body.ok()) return body.status().with_context("chat template");
  ChatTemplate t;
  t.source_ = std::move(source);
  t.body_ = std::make_shared<const jinja::Body>(std::move(body).value());
  return t;
}

Expected<ChatTemplate> ChatTemplate::from_model_dir(const std::string& dir) {
  std::optional<std::string> source;
  nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
  const std::string cfg_path = dir + "/tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    PHILORA_ASSIGN_OR_RETURN(std::string text, read_text(cfg_path));
    cfg = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (cfg.is_discarded() || !cfg.is_object()) return Status::errorf("{}: invalid JSON", cfg_path);
  }
  const std::string jinja_path = dir + "/chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) {
    PHILORA_ASSIGN_OR_RETURN(std::string text, read_text(jinja_path));
    source = std::move(text);
  } else if (auto it = cfg.find("chat_template"); it != cfg.end()) {
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& entry : *it) {
        if (entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string()) {
          source = entry["template"].get<std::string>();
        }
      }
      if (!source) return Status::errorf("{}: chat_template has no \"default\" entry", cfg_path);
    }
  }
  if (!source)
    return Status::errorf(
        "{} has no chat template (neither chat_template.jinja nor tokenizer_config.json's "
        "chat_template)",
        dir);
  auto t = from_string(std::move(*source));
  if (!t.ok()) return t.status().with_context(dir);
  t->bos_token_ = config_token(cfg, "bos_token");
  t->eos_token_ = config_token(cfg, "eos_token");
  return t;
}

Expected<std::string> ChatTemplate::render_context(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) return Status::error("chat template context must be a JSON object");
  std::vector<std::pair<std::string, jinja::Value>> vars = jinja::default_globals();
  for (auto it = context.begin(); it != context.end(); ++it)
    vars.emplace_back(it.key(), jinja::Value::from_json(it.value()));
  auto out = jinja::render(*body_, std::move(vars));
  if (!out.ok()) return out.status().with_context("chat template");
  return out;
}

Expected<std::string> ChatTemplate::render(const nlohmann::ordered_json& messages,
                                           bool add_generation_prompt, const std::string& bos_token,
                                           const std::string& eos_token,
                                           const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) return Status::error("chat template: messages must be a JSON array");
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  ctx["messages"] = messages;
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = bos_token;
  ctx["eos_token"] = eos_token;
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
  }
  return render_context(ctx);
}

Expected<std::string> ChatTemplate::render(const nlohmann::ordered_json& messages,
                                           bool add_generation_prompt) const {
  return render(messages, add_generation_prompt, bos_token_.value_or(""), eos_token_.value_or(""));
}

}  // namespace philora::tokenizer
