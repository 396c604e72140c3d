#include "tokenizer/tokenizer.h"

#include <limits>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

namespace {

Expected<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::errorf("cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) return Status::errorf("cannot read {}", path);
  return ss.str();
}

Expected<nlohmann::json> parse_json(std::string_view text, const std::string& what) {
  nlohmann::json j =
      nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::errorf("{}: invalid JSON", what);
  return j;
}

// A special token in tokenizer_config.json: a string or {"content": "..."}.
std::optional<std::string> config_token(const nlohmann::json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const auto& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_json(const nlohmann::json& j) {
  // The readers check what they expect and say so; a field of a type they do
  // not expect (a null "type", say) can still make nlohmann::json throw, and
  // that too is a file we refuse, not a crash.
  try {
    return from_checked_json(j);
  } catch (const nlohmann::json::exception& e) {
    return Status::errorf("tokenizer.json: unexpected value: {}", e.what());
  }
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_checked_json(const nlohmann::json& j) {
  if (!j.is_object()) return Status::error("tokenizer.json: top level is not an object");
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  static const nlohmann::json kNull;
  const auto get = [&](const char* key) -> const nlohmann::json& {
    auto it = j.find(key);
    return it == j.end() ? kNull : *it;
  };

  const nlohmann::json& model = get("model");
  const std::string model_type = model.is_object() ? model.value("type", std::string("BPE")) : "";
  if (model_type != "BPE") {
    return Status::errorf("tokenizer.json: model type {:?} is not supported (supported: BPE)",
                          model_type);
  }
  {
    auto m = BpeModel::from_json(model);
    if (!m.ok()) return m.status().with_context("tokenizer.json");
    t->model_ = std::move(m).value();
  }
  {
    auto n = make_normalizer(get("normalizer"));
    if (!n.ok()) return n.status().with_context("tokenizer.json");
    t->normalizer_ = std::move(n).value();
  }
  {
    auto p = make_pre_tokenizer(get("pre_tokenizer"));
    if (!p.ok()) return p.status().with_context("tokenizer.json");
    t->pre_tokenizer_ = std::move(p).value();
  }
  {
    // Offsets only: a ByteLevel post-processor (alone or in a Sequence) may trim them.
    const nlohmann::json& pp = get("post_processor");
    const auto byte_level = [&](const nlohmann::json& x) {
      if (!x.is_object() || x.value("type", std::string()) != "ByteLevel") return;
      const auto flag = [&](const char* key, bool dflt) {
        auto it = x.find(key);
        return it != x.end() && it->is_boolean() ? it->get<bool>() : dflt;
      };
      t->trim_offsets_ = flag("trim_offsets", true);
      t->trim_add_prefix_space_ = flag("add_prefix_space", true);
    };
    byte_level(pp);
    if (pp.is_object() && pp.contains("processors") && pp["processors"].is_array())
      for (const auto& x : pp["processors"]) byte_level(x);
  }
  {
    auto p = make_post_processor(get("post_processor"));
    if (!p.ok()) return p.status().with_context("tokenizer.json");
    t->post_processor_ = std::move(p).value();
  }
  {
    auto d = make_decoder(get("decoder"));
    if (!d.ok()) return d.status().with_context("tokenizer.json");
    t->decoder_ = std::move(d).value();
  }
  {
    const Normalizer* norm = t->normalizer_.get();
    const BpeModel* model_ptr = t->model_.get();
    AddedVocabulary::ModelVocab model_vocab{
        [model_ptr](std::string_view s) { return model_ptr->token_to_id(s); },
        model_ptr->vocab_size()};
    auto a =
        AddedVocabulary::from_json(get("added_tokens"), model_vocab, [norm](std::string_view s) {
          NormalizedText n{std::string(s), 0};
          if (norm) norm->normalize(n);
          return n.text;
        });
    if (!a.ok()) return a.status().with_context("tokenizer.json");
    t->added_ = std::move(a).value();
  }
  return t;
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_json_string(std::string_view json) {
  PHILORA_ASSIGN_OR_RETURN(nlohmann::json j, parse_json(json, "tokenizer.json"));
  return from_json(j);
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_file(const std::string& path) {
  PHILORA_ASSIGN_OR_RETURN(std::string text, read_file(path));
  PHILORA_ASSIGN_OR_RETURN(nlohmann::json j, parse_json(text, path));
  auto t = from_json(j);
  if (!t.ok()) return t.status().with_context(path);
  return t;
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_model_dir(const std::string& dir) {
  PHILORA_ASSIGN_OR_RETURN(auto t, from_file(dir + "/tokenizer.json"));
  if (auto cfg_text = read_file(dir + "/tokenizer_config.json"); cfg_text.ok()) {
    PHILORA_ASSIGN_OR_RETURN(nlohmann::json cfg,
                             parse_json(*cfg_text, dir + "/tokenizer_config.json"));
    t->bos_token_ = config_token(cfg, "bos_token");
    t->eos_token_ = config_token(cfg, "eos_token");
  }
  if (auto eos = t->eos_id()) t->stop_ids_.push_back(*eos);
  if (auto gen_text = read_file(dir + "/generation_config.json"); gen_text.ok()) {
    PHILORA_ASSIGN_OR_RETURN(nlohmann::json gen,
                             parse_json(*gen_text, dir + "/generation_config.json"));
    if (gen.contains("eos_token_id")) {
      const auto& e = gen["eos_token_id"];
      std::vector<int32_t> ids;
      const auto id_of = [](const nlohmann::json& x) -> std::optional<int32_t> {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
            x.get<int64_t>() > std::numeric_limits<int32_t>::max())
          return std::nullopt;
        return x.get<int32_t>();
      };
      if (auto id = id_of(e)) ids.push_back(*id);
      if (e.is_array())
        for (const auto& x : e)
          if (auto id = id_of(x)) ids.push_back(*id);
      for (int32_t id : ids)
        if (std::find(t->stop_ids_.begin(), t->stop_ids_.end(), id) == t->stop_ids_.end())
          t->stop_ids_.push_back(id);
    }
  }
  return t;
}

// ---- encode -------------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!unicode::is_valid(text)) {
    repaired = unicode::to_valid_lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> segments;
  added_->split(text, /*normalized_set=*/false, segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
    } else if (s.end > s.begin) {
      encode_segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, ids);
    }
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);
  return ids;
}

void Tokenizer::encode_segment(std::string_view text, bool at_start,
                               std::vector<int32_t>& ids) const {
  if (!normalizer_ && !added_->has_normalized_tokens()) {
    encode_pieces(text, at_start, 0, ids);
    return;
  }
  NormalizedText n{std::string(text), 0};
  if (normalizer_) normalizer_->normalize(n);
  size_t prefix_bytes = 0;
  for (size_t c = 0; c < n.prefix_chars && prefix_bytes < n.text.size(); ++c) {
    prefix_bytes += unicode::sequence_length(static_cast<unsigned char>(n.text[prefix_bytes]));
  }
  if (!added_->has_normalized_tokens()) {
    encode_pieces(n.text, at_start, prefix_bytes, ids);
    return;
  }
  std::vector<Segment> segments;
  added_->split(n.text, /*normalized_set=*/true, segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
    } else if (s.end > s.begin) {
      encode_pieces(std::string_view(n.text).substr(s.begin, s.end - s.begin),
                    at_start && s.begin <= prefix_bytes,
                    s.begin < prefix_bytes ? prefix_bytes - s.begin : 0, ids);
    }
  }
}

void Tokenizer::encode_pieces(std::string_view text, bool at_start, size_t prefix_bytes,
                              std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  if (!pre_tokenizer_) {
    model_->tokenize(text, false, ids);
    return;
  }
  auto to_model = [&](const Piece& p) { model_->tokenize(p.text, p.raw_bytes, ids); };
  pre_tokenizer_->pre_tokenize(Piece{text, at_start, prefix_bytes, false}, PieceSink(to_model));
}

// ---- decode and vocabulary ----------------------------------------------------------------------

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* a = added_->by_id(id)) {
      if (skip_special_tokens && a->special) continue;
      tokens.push_back(a->content);
    } else if (const std::string* s = model_->id_to_token(id)) {
      tokens.push_back(*s);
    }
  }
  std::string out;
  if (decoder_) {
    decoder_->decode_chain(tokens);
    for (const auto& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
  }
  return out;
}

std::optional<std::string> Tokenizer::token_bytes(int32_t id) const {
  std::string t;
  if (const AddedToken* a = added_->by_id(id)) {
    if (a->special) return std::nullopt;
    t = a->content;
  } else if (const std::string* s = model_->id_to_token(id)) {
    t = *s;
  } else {
    return std::nullopt;
  }
  if (decoder_) decoder_->token_bytes(t);
  return t;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* a = added_->by_content(token)) return a->id;
  return model_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* a = added_->by_id(id)) return a->content;
  if (const std::string* s = model_->id_to_token(id)) return *s;
  return std::nullopt;
}

size_t Tokenizer::vocab_size() const {
  int32_t max_id = model_->max_id();
  for (const AddedToken& a : added_->tokens()) max_id = std::max(max_id, a.id);
  return static_cast<size_t>(max_id + 1);
}

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* a = added_->by_id(id);
  return a && a->special;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return added_->tokens(); }

const std::vector<std::string>& Tokenizer::load_warnings() const { return added_->warnings(); }

std::optional<int32_t> Tokenizer::bos_id() const {
  return bos_token_ ? token_to_id(*bos_token_) : std::nullopt;
}

std::optional<int32_t> Tokenizer::eos_id() const {
  return eos_token_ ? token_to_id(*eos_token_) : std::nullopt;
}

}  // namespace philora::tokenizer
