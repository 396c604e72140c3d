// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace philora::test {

// EXPECT_HAS(text, part): text contains part (prints both when it does not).
inline ::testing::AssertionResult Contains(const char* text_expr, const char*,
                                           const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << text_expr << " does not contain \"" << part << "\"\n  actual: " << text;
}
#define EXPECT_HAS(text, part) EXPECT_PRED_FORMAT2(::philora::test::Contains, text, part)

// The JSON values of a JSON-lines file, blank lines skipped.
inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// A tiny GQA Phi-3: hidden 16, 4 heads of 4 (2 kv heads), intermediate 24, 3 layers.
inline model::Phi3Config tiny_phi3_config() {
  model::Phi3Config c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  return c;
}

}  // namespace philora::test
