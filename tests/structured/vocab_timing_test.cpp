// Mask time on real vocabularies (issue 21's benchmark: the Phi-3 32k, Phi-4 100k and
// OpenAI o200k tokenizers, from tests/tokenizer/out, which tests/tokenizer/setup.sh fills; skipped without
// them): compile time, the first walk (tables built as states are met) and warm masks, printed,
// not asserted (the goals are for bench/RESULTS.md). Short walks: CI runs it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "structured/walk.h"

namespace philora::structured {
namespace {

namespace fs = std::filesystem;

void time_vocabulary(const std::string& name) {
  const fs::path dir = fs::path(PHILORA_STRUCTURED_DIR) / ".." / "tokenizer" / "out" / name;
  if (!fs::exists(dir / "tokenizer.json")) GTEST_SKIP() << dir << " is missing (tests/tokenizer/setup.sh)";
  auto tok = tokenizer::Tokenizer::from_model_dir(dir.string());
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const auto v0 = std::chrono::steady_clock::now();
  auto vocab = TokenVocabulary::from_tokenizer(**tok);
  const double vocab_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - v0).count();
  const std::vector<std::pair<ConstraintKind, std::string>> cases = {
      {ConstraintKind::kJsonObject, ""},
      {ConstraintKind::kJsonSchema,
       R"({"type":"object","properties":{"name":{"type":"string","maxLength":20},"age":{"type":"integer","minimum":0,"maximum":150},
          "tags":{"type":"array","items":{"type":"string"},"maxItems":3}},"required":["name","age","tags"],"additionalProperties":false})"}};
  // Tables built by the first mask that meets their state (lazy: as before the budget), built
  // before `get` returns (ahead), and the default: built in the background while the walk
  // starts at once (the walk's masks build what is not there yet).
  TableBudget lazy, ahead, background;
  lazy.max_states = 0;
  ahead.background = false;
  const std::pair<const char*, TableBudget> budgets[] = {{"lazy", lazy}, {"ahead", ahead}, {"background", background}};
  for (const auto& [kind, text] : cases) for (const auto& [budget_name, budget] : budgets) {
    ConstraintCache cache(vocab, 256, {}, budget);
    const auto t0 = std::chrono::steady_clock::now();
    auto c = cache.get(kind, text);
    const double compile_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(c.ok()) << c.status().message();
    std::vector<double> first, warm;
    for (uint64_t seed = 0; seed < 4; ++seed) {
      test::Walk w = test::random_walk(*c, seed, 60, 30);
      (seed == 0 ? first : warm).insert((seed == 0 ? first : warm).end(), w.mask_us.begin(),
                                        w.mask_us.end());
    }
    std::sort(first.begin(), first.end());
    std::sort(warm.begin(), warm.end());
    cache.wait_tables();
    std::printf("%s (vocab %zu, vocabulary built in %.0f ms) %s, %s (%lld of %d states): compile %.2f ms; first walk median "
                "%.1f us max %.0f us; warm (%zu masks) median %.1f us p90 %.1f us p99 %.1f us; tables %.1f MB\n",
                name.c_str(), vocab->size(), vocab_ms, kind == ConstraintKind::kJsonObject ? "json_object" : "schema", budget_name,
                static_cast<long long>((*c)->num_tables_built()), (*c)->grammar()->num_states(), compile_ms, first[first.size() / 2], first.back(), warm.size(), warm[warm.size() / 2],
                warm[warm.size() * 9 / 10], warm[warm.size() * 99 / 100], (*c)->table_bytes() / 1e6);
  }
}

TEST(StructuredVocabularies, MaskTimePhi3) { time_vocabulary("phi3"); }
TEST(StructuredVocabularies, MaskTimePhi4) { time_vocabulary("phi4"); }
TEST(StructuredVocabularies, MaskTimeO200k) { time_vocabulary("o200k"); }

}  // namespace
}  // namespace philora::structured
