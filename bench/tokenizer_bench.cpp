// Single-thread encode throughput of philora's tokenizer, measured the way
// tools/tokenizer_golden.py measures HF tokenizers: the text is cut into line-aligned documents of
// at most 4 KiB, each encoded without special tokens, and the best pass over the whole text
// counts. Build and run with bench/tokenizer_bench.sh.
//
//   tokenizer_bench [--seconds S] NAME=TOKENIZER_JSON... -- LABEL=TEXT_FILE...
//
// Prints one line per tokenizer and text, then a JSON summary line.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

using philora::tokenizer::Tokenizer;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<std::string> documents(const std::string& text, size_t limit = 4096) {
  std::vector<std::string> docs;
  std::string cur;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    if (!cur.empty() && cur.size() + (end - pos) > limit) {
      docs.push_back(std::move(cur));
      cur.clear();
    }
    cur.append(text, pos, end - pos);
    pos = end;
  }
  if (!cur.empty()) docs.push_back(std::move(cur));
  return docs;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  double budget = 3.0;
  std::vector<std::pair<std::string, std::string>> toks, texts;
  bool after_sep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) {
      budget = std::stod(argv[++i]);
      continue;
    }
    if (a == "--") {
      after_sep = true;
      continue;
    }
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "usage: %s [--seconds S] NAME=tokenizer.json... -- LABEL=text.txt...\n",
                   argv[0]);
      return 2;
    }
    (after_sep ? texts : toks).emplace_back(a.substr(0, eq), a.substr(eq + 1));
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> corpora;
  for (const auto& [label, path] : texts) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 1;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    corpora.emplace_back(label, documents(ss.str()));
  }
  std::string json = "{\"results\": {";
  for (size_t t = 0; t < toks.size(); ++t) {
    const auto t0 = Clock::now();
    auto tok = Tokenizer::from_file(toks[t].second);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", tok.status().message().c_str());
      return 1;
    }
    const double load = seconds_since(t0);
    json += (t ? ", \"" : "\"") + toks[t].first + "\": {\"load_s\": " + std::to_string(load);
    for (const auto& [label, docs] : corpora) {
      size_t bytes = 0;
      for (const auto& d : docs) bytes += d.size();
      for (size_t i = 0; i < docs.size() && i < 50; ++i)
        (void)(*tok)->encode(docs[i]);  // warm-up, as in the Python script
      double best = 0;
      size_t tokens = 0;
      const auto start = Clock::now();
      do {
        const auto p = Clock::now();
        tokens = 0;
        for (const auto& d : docs) tokens += (*tok)->encode(d).size();
        best = std::max(best, static_cast<double>(bytes) / seconds_since(p) / 1e6);
      } while (seconds_since(start) < budget);
      std::printf("  %-9s %-8s %8.2f MB/s  (%.2f MB, %zu docs, %zu tokens; load %.2f s)\n",
                  toks[t].first.c_str(), label.c_str(), best, bytes / 1e6, docs.size(), tokens,
                  load);
      json += ", \"" + label + "\": {\"mb_per_s\": " + std::to_string(best) +
              ", \"tokens\": " + std::to_string(tokens) + "}";
    }
    json += "}";
  }
  json += "}}";
  std::printf("%s\n", json.c_str());
  return 0;
}
