// philora tokenize: {"id","text"} lines in, {"id","ids","decoded"} lines out.
#include <fstream>
#include <iostream>
#include <memory>

#include "commands.h"
#include "common.h"
#include "tokenizer/tokenize_jsonl.h"
#include "tokenizer/tokenizer.h"

namespace philora::app {

namespace {

struct TokenizeOptions {
  std::string tokenizer;
  std::string model_dir;
  std::string requests;
  bool add_special_tokens = false;
};

int run_tokenize(const TokenizeOptions& o) {
  if (o.tokenizer.empty() == o.model_dir.empty())
    return fail(Status::error("give exactly one of --tokenizer FILE and --model DIR"));
  auto tok = o.tokenizer.empty() ? tokenizer::Tokenizer::from_model_dir(o.model_dir)
                                 : tokenizer::Tokenizer::from_file(o.tokenizer);
  if (!tok) return fail(tok.status());
  std::ifstream in(o.requests);
  if (!in) return fail(Status::errorf("cannot open requests file '{}'", o.requests));
  // Validate every line before printing any, so bad input leaves no partial output.
  std::vector<std::string> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto r = tokenizer::tokenize_json_line(**tok, line, o.add_special_tokens);
    if (!r) return fail(r.status().with_context(o.requests + ":" + std::to_string(n)));
    out.push_back(std::move(*r));
  }
  for (const std::string& l : out) std::cout << l << "\n";
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void add_tokenize_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd =
      app.add_subcommand("tokenize", "token ids of each line's text, and their decoding");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json");
  cmd->add_option("--model", o->model_dir, "model directory holding tokenizer.json");
  cmd->add_option("--requests", o->requests, "JSON lines {id, text}")->required();
  cmd->add_flag("--add-special-tokens", o->add_special_tokens,
                "let the post-processor add BOS/EOS");
  cmd->callback([o, &rc] { rc = run_tokenize(*o); });
}

}  // namespace philora::app
