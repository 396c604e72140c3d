// Small filesystem helpers shared by the loaders: every error names the path.
#pragma once

#include <string>

#include "core/status.h"

namespace philora::io {

// The whole file as bytes; errors say whether it is missing or unreadable.
Expected<std::string> read_text_file(const std::string& path);

// True when `path` names an existing regular file (symlinks followed).
bool is_regular_file(const std::string& path);

// `dir` + "/" + `name` (no separator doubled).
std::string join_path(const std::string& dir, const std::string& name);

}  // namespace philora::io
