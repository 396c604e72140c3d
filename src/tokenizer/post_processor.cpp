#include "tokenizer/post_processor.h"

#include <limits>

#include <string>

#include <nlohmann/json.hpp>

namespace philora::tokenizer {

namespace {

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : steps_) p->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// The "single" template: a list of items, each the sequence itself or the ids of a special token.
class TemplateProcessor final : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;  // when a special token
  };
  explicit TemplateProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& it : items_) {
      if (it.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), it.ids.begin(), it.ids.end());
      }
    }
    ids.swap(out);
  }

 private:
  std::vector<Item> items_;
};

// Wraps the sequence as [cls] ids [sep] (Roberta and Bert processors agree on single sequences).
class WrapProcessor final : public PostProcessor {
 public:
  WrapProcessor(int32_t cls, int32_t sep) : cls_(cls), sep_(sep) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    ids.insert(ids.begin(), cls_);
    ids.push_back(sep_);
  }

 private:
  int32_t cls_, sep_;
};

class NoOpProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

// An integer in [0, 2^31): what a token id read from JSON must be (a float or
// a larger number would not convert to int32_t).
bool is_token_id(const nlohmann::json& v) {
  return v.is_number_integer() && v.get<int64_t>() >= 0 &&
         v.get<int64_t>() <= std::numeric_limits<int32_t>::max();
}

Expected<std::unique_ptr<PostProcessor>> make_template(const nlohmann::json& j) {
  const auto& single = j.value("single", nlohmann::json::array());
  const auto& specials = j.value("special_tokens", nlohmann::json::object());
  std::vector<TemplateProcessor::Item> items;
  for (const auto& piece : single) {
    if (piece.contains("Sequence")) {
      const std::string id = piece["Sequence"].value("id", std::string("A"));
      if (id != "A")
        return Status::errorf(
            "post_processor TemplateProcessing: single template uses sequence {:?}", id);
      items.push_back({true, {}});
    } else if (piece.contains("SpecialToken")) {
      const std::string name = piece["SpecialToken"].value("id", std::string());
      if (!specials.contains(name)) {
        return Status::errorf(
            "post_processor TemplateProcessing: special token {:?} is not in special_tokens", name);
      }
      const auto& ids = specials[name].value("ids", nlohmann::json::array());
      TemplateProcessor::Item item{false, {}};
      for (const auto& id : ids) {
        if (!is_token_id(id))
          return Status::errorf(
              "post_processor TemplateProcessing: special token {:?} has id {}, not a token id",
              name, id.dump());
        item.ids.push_back(id.get<int32_t>());
      }
      items.push_back(std::move(item));
    } else {
      return Status::errorf("post_processor TemplateProcessing: unknown template piece {}",
                            piece.dump());
    }
  }
  return std::unique_ptr<PostProcessor>(new TemplateProcessor(std::move(items)));
}

Expected<int32_t> pair_id(const nlohmann::json& j, const char* key, const std::string& type) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2 ||
      !is_token_id(j[key][1])) {
    return Status::errorf("post_processor {}: \"{}\" must be [token, id]", type, key);
  }
  return j[key][1].get<int32_t>();
}

}  // namespace

Expected<std::unique_ptr<PostProcessor>> make_post_processor(const nlohmann::json& j) {
  using Ptr = std::unique_ptr<PostProcessor>;
  if (j.is_null()) return Ptr();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return Status::errorf("post_processor: expected an object with a \"type\", got {}", j.dump());
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    std::vector<Ptr> steps;
    for (const auto& sub : j.value("processors", nlohmann::json::array())) {
      PHILORA_ASSIGN_OR_RETURN(auto p, make_post_processor(sub));
      if (p) steps.push_back(std::move(p));
    }
    return Ptr(new SequenceProcessor(std::move(steps)));
  }
  if (type == "TemplateProcessing") return make_template(j);
  if (type == "ByteLevel") return Ptr(new NoOpProcessor());
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    PHILORA_ASSIGN_OR_RETURN(int32_t cls, pair_id(j, "cls", type));
    PHILORA_ASSIGN_OR_RETURN(int32_t sep, pair_id(j, "sep", type));
    return Ptr(new WrapProcessor(cls, sep));
  }
  return Status::errorf(
      "post_processor type {:?} is not supported (supported: TemplateProcessing, ByteLevel, "
      "RobertaProcessing, "
      "BertProcessing, Sequence)",
      type);
}

}  // namespace philora::tokenizer
