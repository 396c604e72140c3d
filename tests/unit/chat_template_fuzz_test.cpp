// 1500 random templates over the Jinja subset (tests/tokenizer/make_jinja_fuzz.py), rendered by
// Jinja2 in HF's environment: we must render the same text, or fail where Jinja2 fails.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"
#include "tokenizer/test_support.h"

namespace philora::tokenizer {
namespace {

namespace tt = testing;
using ojson = nlohmann::ordered_json;

std::string shown(const std::string& s) {
  return ojson(s.substr(0, 300)).dump(-1, ' ', false, ojson::error_handler_t::replace);
}

TEST(ChatTemplateFuzz, RandomTemplatesRenderAsInJinja2) {
  const ojson data = ojson::parse(tt::read_file(tt::fixtures_dir() + "/chat/fuzz.json"));
  const ojson& context = data["context"];
  size_t failures = 0, rendered = 0;
  for (const ojson& c : data["cases"]) {
    const std::string source = c["template"].get<std::string>();
    auto t = ChatTemplate::from_string(source);
    auto out = t.ok() ? t->render_context(context) : Expected<std::string>(t.status());
    if (c.contains("error")) {
      if (out.ok() && ++failures <= 10) {
        ADD_FAILURE() << "Jinja2 fails (" << c["error"].get<std::string>() << ") but we render "
                      << shown(*out) << "\n  template: " << shown(source);
      }
      continue;
    }
    ++rendered;
    const std::string want = c["output"].get<std::string>();
    if (!out.ok()) {
      if (++failures <= 10)
        ADD_FAILURE() << out.status().message() << "\n  template: " << shown(source);
    } else if (*out != want && ++failures <= 10) {
      ADD_FAILURE() << "ours " << shown(*out) << "\n  Jinja2 " << shown(want)
                    << "\n  template: " << shown(source);
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << data["cases"].size() << " templates (" << rendered
                          << " render in Jinja2)";
}

}  // namespace
}  // namespace philora::tokenizer
