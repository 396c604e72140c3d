// `philora generate` with structured-output fields on its request lines (guided_json,
// guided_regex, guided_choice, response_format), on the embedded model: outputs validated by
// ajv and node's RegExp (tests/structured/oracle.mjs); a constraint that does not compile is
// an error naming the line and the field.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "model/cli_runner.h"
#include "structured/oracle.h"

namespace philora::structured {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path write_lines(const std::vector<json>& lines) {
  const fs::path p = fs::temp_directory_path() / ("philora_cli_structured_" + std::to_string(::getpid()) + ".jsonl");
  std::ofstream out(p);
  for (const json& l : lines) out << l.dump() << "\n";
  return p;
}

TEST(StructuredCli, GenerateTakesGuidedFields) {
  if (!test::have_ajv()) GTEST_SKIP() << "ajv is not installed";
  const std::string schema =
      R"({"type":"object","properties":{"n":{"type":"integer","minimum":1,"maximum":99},"w":{"enum":["ja","nein"]}},"required":["n","w"],"additionalProperties":false})";
  const std::string pattern = R"([A-Z][a-z]{2,6} \d{1,3})";
  std::vector<json> lines;
  for (int seed = 0; seed < 3; ++seed) {
    lines.push_back({{"id", "json" + std::to_string(seed)}, {"prompt", "Data:"}, {"temperature", 1.0},
                     {"seed", seed}, {"guided_json", json::parse(schema)}});
    lines.push_back({{"id", "re" + std::to_string(seed)}, {"prompt", "Name:"}, {"temperature", 1.0},
                     {"seed", seed}, {"guided_regex", pattern}});
  }
  lines.push_back({{"id", "choice"}, {"prompt", "Yes or no?"}, {"guided_choice", {"yes", "no"}}});
  const fs::path requests = write_lines(lines);
  const philora::test::CliResult r = philora::test::run_philora({"generate", "--model", PHILORA_TINY_MODEL, "--requests",
                                               requests.string(), "--max-new-tokens", "80", "--device", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, json> outs;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    outs[j["id"]] = j;
  }
  ASSERT_EQ(outs.size(), lines.size());
  json ajv = json::array({{{"schema", json::parse(schema)}, {"texts", json::array()}}});
  json re = json::array({{{"pattern", pattern}, {"strings", json::array()}}});
  for (int seed = 0; seed < 3; ++seed) {
    const json& j = outs["json" + std::to_string(seed)];
    const json& g = outs["re" + std::to_string(seed)];
    EXPECT_EQ(j["finish_reason"], "stop") << j.dump();  // the CLI names eos "stop" (vLLM)
    EXPECT_EQ(g["finish_reason"], "stop") << g.dump();
    ajv[0]["texts"].push_back(j["text"]);
    re[0]["strings"].push_back(g["text"]);
  }
  EXPECT_TRUE(outs["choice"]["text"] == "yes" || outs["choice"]["text"] == "no") << outs["choice"].dump();
  std::string error;
  const auto a = test::run_oracle("ajv", ajv, &error);
  ASSERT_TRUE(a) << error;
  for (const json& res : (*a)[0]["results"]) EXPECT_TRUE(res["valid"].get<bool>()) << res.dump() << ajv.dump();
  const auto m = test::run_oracle("regex", re, &error);
  ASSERT_TRUE(m) << error;
  for (size_t k = 0; k < 3; ++k) EXPECT_TRUE((*m)[0]["full"][k].get<bool>()) << re[0]["strings"][k];

  // A constraint that does not compile: an error naming the line's field, no output.
  const fs::path bad = write_lines({{{"id", "bad"}, {"prompt", "x"}, {"guided_regex", "(a\\1)"}}});
  const philora::test::CliResult b = philora::test::run_philora({"generate", "--model", PHILORA_TINY_MODEL, "--requests",
                                               bad.string(), "--device", "cpu"});
  EXPECT_NE(b.exit_code, 0);
  EXPECT_NE(b.err.find("guided_regex"), std::string::npos) << b.err;
  EXPECT_NE(b.err.find("backreference"), std::string::npos) << b.err;
  fs::remove(requests);
  fs::remove(bad);
}

}  // namespace
}  // namespace philora::structured
