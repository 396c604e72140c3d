#include "structured/parser.h"

#include <algorithm>

namespace philora::structured {

EarleyParser::EarleyParser(std::shared_ptr<const CompiledGrammar> g) : g_(std::move(g)) {
  set_begin_.push_back(0);
  add(0, {g_->rule_start[g_->root_rule], 0});
  close(0);
}

void EarleyParser::add(size_t set_start, Item it) {
  for (size_t i = set_start; i < items_.size(); ++i) {
    if (items_[i].state == it.state && items_[i].origin == it.origin) return;
  }
  items_.push_back(it);
}

void EarleyParser::close(size_t k) {
  const CompiledGrammar& g = *g_;
  const size_t start = set_begin_[k];
  for (size_t i = start; i < items_.size(); ++i) {
    const Item it = items_[i];
    for (uint32_t e = g.edge_begin[it.state]; e < g.edge_begin[it.state + 1]; ++e) {
      const RuleEdge edge = g.edges[e];
      add(start, {g.rule_start[edge.rule], static_cast<int32_t>(k)});
      if (g.rule_nullable[edge.rule]) add(start, {edge.target, it.origin});
    }
    if (g.accepting[it.state] && static_cast<size_t>(it.origin) < k) {
      const int32_t rule = g.rule_of[it.state];
      const size_t o_begin = set_begin_[it.origin], o_end = set_begin_[it.origin + 1];
      for (size_t j = o_begin; j < o_end; ++j) {
        const Item w = items_[j];
        for (uint32_t e = g.edge_begin[w.state]; e < g.edge_begin[w.state + 1]; ++e) {
          if (g.edges[e].rule == rule) add(start, {g.edges[e].target, w.origin});
        }
      }
    }
  }
}

bool EarleyParser::push_byte(uint8_t b) {
  const CompiledGrammar& g = *g_;
  const size_t k = num_bytes();
  const size_t begin = set_begin_[k], end = items_.size();
  const size_t start = items_.size();
  set_begin_.push_back(static_cast<uint32_t>(start));
  for (size_t i = begin; i < end; ++i) {
    const int32_t t = g.step(items_[i].state, b);
    if (t >= 0) add(start, {t, items_[i].origin});
  }
  if (items_.size() == start) {
    set_begin_.pop_back();
    return false;
  }
  close(k + 1);
  return true;
}

void EarleyParser::pop_bytes(size_t n) {
  if (n == 0) return;
  const size_t keep = num_bytes() - n;  // sets 0..keep stay
  items_.resize(set_begin_[keep + 1]);
  set_begin_.resize(keep + 1);
}

bool EarleyParser::accepting() const {
  const CompiledGrammar& g = *g_;
  for (size_t i = set_begin_.back(); i < items_.size(); ++i) {
    const Item it = items_[i];
    if (it.origin == 0 && g.accepting[it.state] && g.rule_of[it.state] == g.root_rule) return true;
  }
  return false;
}

void EarleyParser::scanning_states(std::vector<int32_t>& out) const {
  out.clear();
  for (size_t i = set_begin_.back(); i < items_.size(); ++i) {
    if (g_->has_bytes[items_[i].state]) out.push_back(items_[i].state);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

}  // namespace philora::structured
