// Runs tests/structured/oracle.mjs (node's RegExp, ajv) and xgrammar_oracle.mjs (XGrammar) on a
// JSON input; see those files.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>
#include <unistd.h>

namespace philora::structured::test {

inline const std::filesystem::path kOracleDir = PHILORA_STRUCTURED_DIR;

inline bool have_node() { return std::system("node --version > /dev/null 2>&1") == 0; }
inline bool have_ajv() {
  return have_node() && std::filesystem::exists(kOracleDir / "node_modules/ajv/package.json") &&
         std::filesystem::exists(kOracleDir / "node_modules/ajv-formats/package.json");
}

// `node script [mode] IN OUT` on `in`: the script's answer, or nullopt when node failed (the
// message in `error`).
inline std::optional<nlohmann::json> run_oracle_script(const std::string& script, const std::string& mode,
                                                       const nlohmann::json& in, std::string* error) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("philora_structured_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  static int counter = 0;
  const std::string stem = (mode.empty() ? "oracle" : mode) + std::to_string(counter++);
  const auto in_path = dir / (stem + ".in.json"), out_path = dir / (stem + ".out.json"),
             err_path = dir / (stem + ".err");
  std::ofstream(in_path) << in.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  const std::string cmd = "node '" + (kOracleDir / script).string() + "' " + mode + " '" +
                          in_path.string() + "' '" + out_path.string() + "' 2> '" +
                          err_path.string() + "'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream e(err_path);
    std::stringstream ss;
    ss << e.rdbuf();
    if (error) *error = "node failed: " + ss.str();
    return std::nullopt;
  }
  std::ifstream o(out_path);
  nlohmann::json out = nlohmann::json::parse(o);
  std::filesystem::remove_all(dir);
  return out;
}

// oracle.mjs (node's RegExp, ajv) in `mode`.
inline std::optional<nlohmann::json> run_oracle(const std::string& mode, const nlohmann::json& in,
                                                std::string* error) {
  return run_oracle_script("oracle.mjs", mode, in, error);
}

}  // namespace philora::structured::test
