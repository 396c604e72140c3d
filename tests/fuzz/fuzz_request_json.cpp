// Arbitrary request bodies on both APIs: lorax_request and openai_request
// (completions and chat, with the embedded model's tokenizer and chat
// template) either make an engine::Request or throw BadRequest with a status
// and a message; nothing else may escape, and no message names a server path.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "server/routes.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace philora;

struct Context {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  server::ServerContext ctx;
};

const Context& context() {
  static const Context* c = [] {
    auto* c = new Context;
    const std::string dir = PHILORA_SOURCE_DIR "/models/philora-tiny";
    auto tok = tokenizer::Tokenizer::from_model_dir(dir);
    auto chat = tokenizer::ChatTemplate::from_model_dir(dir);
    if (!tok.ok() || !chat.ok()) std::abort();
    c->tok = std::move(*tok);
    c->chat = std::make_unique<tokenizer::ChatTemplate>(std::move(*chat));
    c->ctx.tokenizer = c->tok.get();
    c->ctx.model_name = "philora-tiny";
    c->ctx.adapters = {"kjv", "devil", "jargon"};
    c->ctx.limits.max_total_tokens = 2048;
    const tokenizer::ChatTemplate* t = c->chat.get();
    c->ctx.chat_template = [t](const std::string& messages) -> Expected<std::string> {
      return t->render(nlohmann::ordered_json::parse(messages), true);
    };
    return c;
  }();
  return *c;
}

// A 4xx with a message that names no server path. A message may quote the client's own
// input (an unknown parameter's name): a path the body itself carries is the client's.
void check(const server::BadRequest& e, const nlohmann::json& body) {
  if (e.status < 400 || e.status > 499 || e.message.empty()) std::abort();
  if (e.message.find(PHILORA_SOURCE_DIR) != std::string::npos &&
      body.dump().find(PHILORA_SOURCE_DIR) == std::string::npos)
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const nlohmann::json body =
      nlohmann::json::parse(data + 1, data + size, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) return 0;
  const Context& c = context();
  try {
    switch (data[0] % 4) {
      case 0:
        (void)server::lorax_request(body, c.ctx, "fuzz", server::LoraxRoute::generate);
        break;
      case 1:
        (void)server::lorax_request(body, c.ctx, "fuzz", server::LoraxRoute::compat);
        break;
      case 2:
        (void)server::openai_request(body, c.ctx, /*chat=*/false, "fuzz");
        break;
      default:
        (void)server::openai_request(body, c.ctx, /*chat=*/true, "fuzz");
        break;
    }
  } catch (const server::BadRequest& e) {
    check(e, body);
  }
  return 0;
}
