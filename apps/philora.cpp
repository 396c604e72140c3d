// philora: one binary, subcommands. Only this layer decides to exit.
#include <exception>
#include <iostream>

#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"philora: multi-LoRA inference for the Phi-3 family"};
  app.require_subcommand(1);
  int rc = 0;
  philora::app::add_score_command(app, rc);
  philora::app::add_generate_command(app, rc);
  philora::app::add_bench_command(app, rc);
  philora::app::add_serve_command(app, rc);
  philora::app::add_tokenize_command(app, rc);
  philora::app::add_chat_command(app, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // a device error thrown out of a backend op
    std::cerr << "philora: error: " << e.what() << "\n";
    return 1;
  }
  return rc;
}
