// Each subcommand registers itself on the app; its callback stores the exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace philora::app {

void add_score_command(CLI::App& app, int& rc);
void add_generate_command(CLI::App& app, int& rc);
void add_bench_command(CLI::App& app, int& rc);
void add_serve_command(CLI::App& app, int& rc);
void add_tokenize_command(CLI::App& app, int& rc);
void add_chat_command(CLI::App& app, int& rc);

}  // namespace philora::app
