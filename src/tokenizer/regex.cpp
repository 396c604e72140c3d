#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

// Unicode White_Space, as a class body.
constexpr std::string_view kSpaceBody =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";
// Oniguruma's Unicode \w: Letter | Mark | Decimal_Number | Connector_Punctuation.
constexpr std::string_view kWordBody = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

struct JitStack {
  pcre2_jit_stack* stack = nullptr;
  JitStack() { stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr); }
  ~JitStack() { pcre2_jit_stack_free(stack); }
};

// Per-thread JIT stack: scratch memory only, never observable state.
pcre2_jit_stack* thread_jit_stack() {
  thread_local JitStack s;
  return s.stack;
}

}  // namespace

Expected<std::string> translate_regex(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      if (e == 's' || e == 'S' || e == 'w' || e == 'W') {
        const std::string_view body = (e == 's' || e == 'S') ? kSpaceBody : kWordBody;
        const bool negated = (e == 'S' || e == 'W');
        if (in_class) {
          if (negated) {
            return Status::errorf(
                "regex {:?}: a negated class escape \\{} inside [...] is not supported",
                std::string(p), e);
          }
          out += body;
        } else {
          out += negated ? "[^" : "[";
          out += body;
          out += "]";
        }
        continue;
      }
      out.push_back('\\');
      out.push_back(e);
      // \p{..} / \x{..}: copy the braces verbatim.
      if ((e == 'p' || e == 'P' || e == 'x') && i + 1 < p.size() && p[i + 1] == '{') {
        const size_t close = p.find('}', i + 1);
        if (close == std::string_view::npos)
          return Status::errorf("regex {:?}: unterminated \\{}{{", std::string(p), e);
        out.append(p.substr(i + 1, close - i));
        i = close;
      }
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    out.push_back(c);
  }
  return out;
}

Expected<std::shared_ptr<const Regex>> Regex::compile(std::string_view pattern) {
  PHILORA_ASSIGN_OR_RETURN(std::string translated, translate_regex(pattern));
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return Status::errorf("regex {:?} does not compile at offset {}: {}", std::string(pattern),
                          err_off, reinterpret_cast<const char*>(msg));
  }
  std::shared_ptr<Regex> re(new Regex());
  re->pattern_ = std::string(pattern);
  re->code_ = code;
  re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::shared_ptr<const Regex>(std::move(re));
}

Expected<std::shared_ptr<const Regex>> Regex::literal(std::string_view text) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                    PCRE2_UTF | PCRE2_LITERAL | PCRE2_NO_UTF_CHECK, &err, &err_off, nullptr);
  if (!code) return Status::errorf("literal pattern {:?} does not compile", std::string(text));
  std::shared_ptr<Regex> re(new Regex());
  re->pattern_ = std::string(text);
  re->code_ = code;
  re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::shared_ptr<const Regex>(std::move(re));
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_impl(std::string_view text, void (*cb)(void*, size_t, size_t),
                          void* ctx) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  pcre2_match_context* mc = nullptr;
  if (jit_) {
    mc = pcre2_match_context_create(nullptr);
    pcre2_jit_stack_assign(mc, nullptr, thread_jit_stack());
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), start, 0, md, mc)
                  : pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, mc);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && jit_) {
      // Out of JIT stack on a pathological input: the interpreter keeps its state on the heap.
      rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Still failing (a resource limit): keep the rest as one match rather than lose text.
      if (start < text.size()) cb(ctx, start, text.size());
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      cb(ctx, b, e);
      start = e;
    } else {
      // Empty match: skip one character.
      if (b >= text.size()) break;
      start = b + unicode::sequence_length(static_cast<unsigned char>(text[b]));
    }
  }
  pcre2_match_context_free(mc);
  pcre2_match_data_free(md);
}

bool Regex::matches_at_start(std::string_view text) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

}  // namespace philora::tokenizer
