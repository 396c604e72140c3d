// A model's chat template: the Jinja `chat_template` of tokenizer_config.json (or the file
// chat_template.jinja), rendered the way HF transformers' apply_chat_template renders it:
// trim_blocks and lstrip_blocks on, loop controls, raise_exception, strftime_now, HF's tojson,
// and the variables messages, tools (None), documents (None), add_generation_prompt, bos_token,
// eos_token (plus any extra ones). The subset of Jinja supported is described in
// jinja/parser.h and jinja/builtins.h; a construct outside it is an error naming it, at load
// when it is syntax, at render when it is a filter, test or method.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace philora::tokenizer {

namespace jinja {
struct Stmt;
}

class ChatTemplate {
 public:
  // Parses template source.
  static Expected<ChatTemplate> from_string(std::string source);
  // Loads `dir`/chat_template.jinja if present, else tokenizer_config.json's "chat_template" (a
  // string, or a list of {"name", "template"} from which "default" is taken). bos_token and
  // eos_token come from tokenizer_config.json when it has them.
  static Expected<ChatTemplate> from_model_dir(const std::string& dir);

  // Renders `messages` (a JSON array of {"role", "content", ...}). `extra` (a JSON object) adds
  // or overrides variables, e.g. {"tools": [...]}.
  Expected<std::string> render(
      const nlohmann::ordered_json& messages, bool add_generation_prompt,
      const std::string& bos_token, const std::string& eos_token,
      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  // Same, with the bos/eos tokens of the model dir (empty strings when it has none).
  Expected<std::string> render(const nlohmann::ordered_json& messages,
                               bool add_generation_prompt) const;
  // Renders with exactly the variables of `context` (a JSON object) plus the globals.
  Expected<std::string> render_context(const nlohmann::ordered_json& context) const;

  const std::string& source() const { return source_; }
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  const std::optional<std::string>& eos_token() const { return eos_token_; }

 private:
  std::string source_;
  std::shared_ptr<const std::vector<std::unique_ptr<jinja::Stmt>>> body_;
  std::optional<std::string> bos_token_, eos_token_;
};

}  // namespace philora::tokenizer
