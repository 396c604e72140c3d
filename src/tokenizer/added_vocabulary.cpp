#include "tokenizer/added_vocabulary.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include <nlohmann/json.hpp>

#include "tokenizer/unicode.h"

namespace philora::tokenizer {

void AddedVocabulary::Matcher::add(std::string_view key, int32_t token_index) {
  if (key.empty()) return;
  first_byte[static_cast<unsigned char>(key[0])] = true;
  int32_t node = 0;
  for (char ch : key) {
    const auto c = static_cast<unsigned char>(ch);
    auto& kids = nodes[node].children;
    auto it = std::lower_bound(kids.begin(), kids.end(), c,
                               [](const auto& p, unsigned char v) { return p.first < v; });
    if (it != kids.end() && it->first == c) {
      node = it->second;
    } else {
      const auto next = static_cast<int32_t>(nodes.size());
      kids.insert(it, {c, next});
      nodes.emplace_back();
      node = next;
    }
  }
  // The first token added with a given content wins.
  if (nodes[node].token < 0) nodes[node].token = token_index;
  tokens.push_back(token_index);
}

size_t AddedVocabulary::Matcher::longest_at(std::string_view text, size_t i, int32_t& token) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t k = i; k < text.size(); ++k) {
    const auto c = static_cast<unsigned char>(text[k]);
    const auto& kids = nodes[node].children;
    auto it = std::lower_bound(kids.begin(), kids.end(), c,
                               [](const auto& p, unsigned char v) { return p.first < v; });
    if (it == kids.end() || it->first != c) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = k + 1 - i;
      token = nodes[node].token;
    }
  }
  return best;
}

Expected<std::unique_ptr<AddedVocabulary>> AddedVocabulary::from_json(
    const nlohmann::json& added, const ModelVocab& model,
    const std::function<std::string(std::string_view)>& normalize) {
  std::unique_ptr<AddedVocabulary> v(new AddedVocabulary());
  PHILORA_ASSIGN_OR_RETURN(
      v->word_char_, Regex::compile("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]"));
  if (added.is_null()) return v;
  if (!added.is_array()) return Status::error("added_tokens must be an array");
  // New ids count up from the model's vocabulary size (HF 0.23 adds all tokens of a file at once).
  auto next_id = static_cast<int32_t>(model.size);
  for (size_t k = 0; k < added.size(); ++k) {
    const auto& t = added[k];
    if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
        !t["content"].is_string() || !t["id"].is_number_integer() ||
        t["id"].get<int64_t>() < 0 || t["id"].get<int64_t>() > (int64_t(1) << 30)) {
      return Status::errorf(
          "added_tokens[{}]: expected an object with an integer \"id\" (0 to 2^30) and a string "
          "\"content\"",
          k);
    }
    AddedToken a;
    const int32_t declared = t["id"].get<int32_t>();
    a.content = t["content"].get<std::string>();
    a.single_word = t.value("single_word", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.special = t.value("special", false);
    a.normalized = t.value("normalized", !a.special);
    if (a.content.empty()) continue;
    if (!unicode::is_valid(a.content))
      return Status::errorf("added_tokens[{}]: content is not valid UTF-8", k);
    auto known = v->by_content_.find(a.content);
    if (known != v->by_content_.end()) {
      // Same content again: it keeps its id and takes the new options.
      a.id = v->tokens_[known->second].id;
      v->tokens_[known->second] = a;
    } else {
      if (auto id = model.token_to_id(a.content)) {
        a.id = *id;
      } else {
        a.id = next_id++;
      }
      const size_t index = v->tokens_.size();
      v->by_id_[a.id] = index;
      v->by_content_.emplace(a.content, index);
      v->tokens_.push_back(a);
    }
    if (a.id != declared) {
      v->warnings_.push_back(fmt::format("added token {:?} is declared with id {} but gets id {}",
                                         a.content, declared, a.id));
    }
  }
  // HF matches special tokens first in its pattern list; with leftmost-longest matching the order
  // only matters for identical contents, where the first one listed wins.
  for (size_t i = 0; i < v->tokens_.size(); ++i) {
    const AddedToken& a = v->tokens_[i];
    if (a.normalized) {
      v->normalized_.add(normalize ? normalize(a.content) : a.content, static_cast<int32_t>(i));
    } else {
      v->raw_.add(a.content, static_cast<int32_t>(i));
    }
  }
  return v;
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

namespace {

// Start of the whitespace run that ends `s` (HF: leftmost match of \s*$).
size_t trailing_space_start(std::string_view s, size_t floor) {
  size_t e = s.size();
  while (e > floor) {
    size_t b = e - 1;
    while (b > floor && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!unicode::is_white_space(unicode::decode(s, i))) break;
    e = b;
  }
  return e;
}

// End of the whitespace run that starts at s[from].
size_t leading_space_end(std::string_view s, size_t from) {
  size_t i = from;
  while (i < s.size()) {
    size_t j = i;
    if (!unicode::is_white_space(unicode::decode(s, j))) break;
    i = j;
  }
  return i;
}

}  // namespace

void AddedVocabulary::split(std::string_view text, bool normalized_set,
                            std::vector<Segment>& out) const {
  const Matcher& m = normalized_set ? normalized_ : raw_;
  if (m.tokens.empty() || text.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  const size_t first_out = out.size();
  size_t start_offset = 0;  // end of the previous segment
  size_t i = 0;
  while (i < text.size()) {
    if (!m.first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t index = -1;
    const size_t len = m.longest_at(text, i, index);
    if (len == 0) {
      ++i;
      continue;
    }
    const AddedToken& tok = tokens_[index];
    size_t start = i, stop = i + len;
    i = stop;  // matches never overlap, even when one is discarded
    if (tok.single_word) {
      bool start_ok = start == 0;
      if (!start_ok) {
        size_t b = start - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        start_ok = !word_char_->matches_at_start(text.substr(b, start - b));
      }
      const bool stop_ok = stop == text.size() || !word_char_->matches_at_start(text.substr(stop));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(text.substr(0, start), 0), start_offset);
    if (tok.rstrip) stop = leading_space_end(text, stop);
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
    i = std::max(i, stop);
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
  if (out.size() == first_out) out.push_back({0, text.size(), -1});
}

}  // namespace philora::tokenizer
