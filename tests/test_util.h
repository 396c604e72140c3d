// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

}  // namespace philora::test
