// Renders a parsed template with Jinja2's scoping: a for-loop iteration gets its own scope (sets
// inside it are not seen after it, nor by the next iteration), `if` does not; namespace()
// objects carry values out of loops.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "tokenizer/jinja/ast.h"

namespace philora::tokenizer::jinja {

// Renders `body` with `variables` (context and globals) in the outermost scope.
Expected<std::string> render(const Body& body,
                             std::vector<std::pair<std::string, Value>> variables);

}  // namespace philora::tokenizer::jinja
