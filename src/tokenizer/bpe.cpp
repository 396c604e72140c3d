#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include <nlohmann/json.hpp>

#include "tokenizer/unicode.h"

namespace philora::tokenizer {

// ---- MergeTable ---------------------------------------------------------------------------------

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
}

void MergeTable::insert(int32_t a, int32_t b, Merge m) {
  if ((size_ + 1) * 2 > slots_.size()) {
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(16, old.size()));
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      insert(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key & 0xFFFFFFFFu), s.merge);
    }
  }
  const uint64_t key = pack(a, b);
  size_t i = hash(key) & mask_;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
  if (slots_[i].key == kEmpty) ++size_;
  slots_[i].key = key;
  slots_[i].merge = m;
}

// ---- PieceCache ---------------------------------------------------------------------------------

namespace {

// A fast non-cryptographic hash of a short byte string (never returns 0).
uint64_t hash_bytes(std::string_view s) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = 0x243F6A8885A308D3ull ^ (s.size() * kMul);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * kMul;
  h ^= h >> 32;
  return h | 1;
}

}  // namespace

PieceCache::PieceCache() {
  for (Shard& s : shards_) {
    s.small.resize(kSmallPerShard);
    s.large.resize(kLargePerShard);
  }
}

namespace {

// Two-way set lookup in a table of slots.
template <typename Slot>
bool slot_get(const std::vector<Slot>& table, uint64_t h, std::string_view key,
              std::vector<int32_t>& out) {
  const size_t mask = table.size() - 1;
  const size_t i = (h >> 8) & mask;
  for (size_t k = i; k < i + 2; ++k) {
    const Slot& slot = table[k & mask];
    if (slot.hash == h && slot.key_len == key.size() &&
        std::memcmp(slot.key, key.data(), key.size()) == 0) {
      out.insert(out.end(), slot.ids, slot.ids + slot.n_ids);
      return true;
    }
  }
  return false;
}

template <typename Slot>
void slot_put(std::vector<Slot>& table, uint64_t h, std::string_view key, const int32_t* ids,
              size_t n) {
  const size_t mask = table.size() - 1;
  const size_t i = (h >> 8) & mask;
  Slot* slot = &table[i];
  if (slot->hash != 0 && table[(i + 1) & mask].hash == 0) slot = &table[(i + 1) & mask];
  slot->hash = h;
  slot->key_len = static_cast<uint8_t>(key.size());
  slot->n_ids = static_cast<uint8_t>(n);
  std::memcpy(slot->key, key.data(), key.size());
  std::memcpy(slot->ids, ids, n * sizeof(int32_t));
}

}  // namespace

bool PieceCache::get(std::string_view key, std::vector<int32_t>& out) const {
  if (key.size() > sizeof(Large::key)) return false;
  const uint64_t h = hash_bytes(key);
  const Shard& s = shards_[h % kShards];
  std::lock_guard<std::mutex> lock(s.mu);
  return key.size() <= sizeof(Small::key) ? slot_get(s.small, h, key, out)
                                          : slot_get(s.large, h, key, out);
}

void PieceCache::put(std::string_view key, const int32_t* ids, size_t n) {
  const bool small = key.size() <= sizeof(Small::key) && n <= std::size(Small{}.ids);
  if (!small && (key.size() > sizeof(Large::key) || n > std::size(Large{}.ids))) return;
  const uint64_t h = hash_bytes(key);
  Shard& s = shards_[h % kShards];
  std::lock_guard<std::mutex> lock(s.mu);
  if (key.size() <= sizeof(Small::key)) {
    if (n <= std::size(Small{}.ids)) slot_put(s.small, h, key, ids, n);
  } else {
    slot_put(s.large, h, key, ids, n);
  }
}

// ---- BpeModel: loading --------------------------------------------------------------------------

namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

Expected<std::pair<std::string, std::string>> parse_merge(const nlohmann::json& m, size_t rank) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
      return Status::errorf("model.merges[{}] = {:?}: expected two tokens separated by one space",
                            rank, s);
    }
    return std::make_pair(s.substr(0, sp), s.substr(sp + 1));
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    return std::make_pair(m[0].get<std::string>(), m[1].get<std::string>());
  }
  return Status::errorf("model.merges[{}]: expected \"a b\" or [\"a\", \"b\"], got {}", rank,
                        m.dump());
}

std::string optional_string(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return {};
  return j[key].get<std::string>();
}

}  // namespace

Expected<std::unique_ptr<BpeModel>> BpeModel::from_json(const nlohmann::json& j) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  if (!j.contains("vocab") || !j["vocab"].is_object())
    return Status::error("model: missing \"vocab\" object");
  if (j.contains("dropout") && !j["dropout"].is_null()) {
    const double d = j["dropout"].get<double>();
    if (d != 0.0)
      return Status::errorf("model: BPE dropout {} is not supported (only null or 0)", d);
  }
  for (const char* key : {"unk_token", "continuing_subword_prefix", "end_of_word_suffix"}) {
    if (j.contains(key) && !j[key].is_null() && !j[key].is_string()) {
      return Status::errorf("model.{} must be a string or null", key);
    }
  }
  m->fuse_unk_ = j.value("fuse_unk", false);
  m->byte_fallback_ = j.value("byte_fallback", false);
  m->ignore_merges_ = j.value("ignore_merges", false);
  m->prefix_ = optional_string(j, "continuing_subword_prefix");
  m->suffix_ = optional_string(j, "end_of_word_suffix");

  const auto& vocab = j["vocab"];
  m->vocab_.reserve(vocab.size() * 2);
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer())
      return Status::errorf("model.vocab[{:?}]: id is not an integer", it.key());
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > (1 << 30))
      return Status::errorf("model.vocab[{:?}]: id {} out of range", it.key(), id);
    m->vocab_.emplace(it.key(), static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }
  // Ids index tables here: a vocabulary must be nearly dense (real ones are),
  // so that a few entries cannot make us allocate gigabytes.
  if (max_id >= 2 * int64_t(vocab.size()) + 1024)
    return Status::errorf("model.vocab: ids go up to {} for {} tokens (a vocabulary's ids must be "
                          "nearly dense)",
                          max_id, vocab.size());
  m->id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  m->id_present_.assign(static_cast<size_t>(max_id + 1), 0);
  m->bmp_ids_.assign(0x10000, -1);
  for (const auto& [tok, id] : m->vocab_) {
    m->id_to_token_[id] = tok;
    m->id_present_[id] = 1;
    if (!tok.empty() &&
        unicode::sequence_length(static_cast<unsigned char>(tok[0])) == tok.size() &&
        unicode::is_valid(tok)) {
      size_t i = 0;
      const uint32_t cp = unicode::decode(tok, i);
      if (cp < 0x10000) {
        m->bmp_ids_[cp] = id;
      } else {
        m->astral_ids_[cp] = id;
      }
    }
  }

  const std::string unk = optional_string(j, "unk_token");
  if (!unk.empty()) {
    auto it = m->vocab_.find(unk);
    // HF only fails when the unknown token is actually needed; mirror that by keeping it unset.
    if (it != m->vocab_.end()) m->unk_id_ = it->second;
  }

  const auto& alphabet = unicode::byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(alphabet[b]);
    m->byte_level_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
    auto fb = m->vocab_.find(fmt::format("<0x{:02X}>", b));
    m->byte_fallback_ids_[b] = fb == m->vocab_.end() ? -1 : fb->second;
  }

  static const nlohmann::json kNoMerges = nlohmann::json::array();
  const auto merges_it = j.find("merges");
  const nlohmann::json& merges = merges_it == j.end() ? kNoMerges : *merges_it;
  if (!merges.is_array()) return Status::error("model.merges must be an array");
  m->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    PHILORA_ASSIGN_OR_RETURN(auto pair, parse_merge(merges[rank], rank));
    auto a = m->vocab_.find(pair.first);
    auto b = m->vocab_.find(pair.second);
    if (a == m->vocab_.end() || b == m->vocab_.end()) {
      return Status::errorf("model.merges[{}]: token {:?} is not in the vocabulary", rank,
                            a == m->vocab_.end() ? pair.first : pair.second);
    }
    std::string merged = pair.first;
    merged +=
        std::string_view(pair.second)
            .substr(!m->prefix_.empty() && pair.second.starts_with(m->prefix_) ? m->prefix_.size()
                                                                               : 0);
    auto n = m->vocab_.find(merged);
    if (n == m->vocab_.end()) {
      return Status::errorf("model.merges[{}]: merged token {:?} is not in the vocabulary", rank,
                            merged);
    }
    m->merges_.insert(a->second, b->second, {static_cast<uint32_t>(rank), n->second});
  }

  // Cutting before "▁" runs is exact when "▁" is a token and no token has "▁" right after
  // another character (then no merge can join the two sides).
  if (m->prefix_.empty() && m->suffix_.empty() && m->vocab_.count(std::string(kMetaspace))) {
    bool safe = true;
    for (const auto& [tok, id] : m->vocab_) {
      for (size_t p = tok.find(kMetaspace, 1); p != std::string::npos;
           p = tok.find(kMetaspace, p + 1)) {
        if (p < kMetaspace.size() ||
            tok.compare(p - kMetaspace.size(), kMetaspace.size(), kMetaspace) != 0) {
          safe = false;
          break;
        }
      }
      if (!safe) break;
    }
    m->cut_before_metaspace_ = safe;
  }
  return m;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

std::optional<int32_t> BpeModel::char_id(std::string_view ch, uint32_t cp) const {
  if (cp < 0x10000) {
    const int32_t id = bmp_ids_[cp];
    if (id >= 0) return id;
    return std::nullopt;
  }
  auto it = astral_ids_.find(cp);
  if (it == astral_ids_.end()) return std::nullopt;
  return it->second;
}

// ---- BpeModel: encoding -------------------------------------------------------------------------

void BpeModel::initial_symbols(std::string_view piece, bool raw_bytes,
                               std::vector<int32_t>& ids) const {
  std::string mapped;
  if (raw_bytes) {
    bool all_known = true;
    for (char c : piece) {
      const int32_t id = byte_level_ids_[static_cast<unsigned char>(c)];
      if (id < 0) {
        all_known = false;
        break;
      }
      ids.push_back(id);
    }
    if (all_known) return;
    ids.clear();
    const auto& alphabet = unicode::byte_level_alphabet();
    for (char c : piece) mapped += alphabet[static_cast<unsigned char>(c)];
    piece = mapped;
  }
  // Pending run of unknown characters: (unk id). HF adds it when a known character follows.
  bool unk_pending = false;
  const bool affixes = !prefix_.empty() || !suffix_.empty();
  std::string symbol;
  size_t i = 0;
  while (i < piece.size()) {
    const size_t start = i;
    const uint32_t cp = unicode::decode(piece, i);
    std::string_view ch = piece.substr(start, i - start);
    std::optional<int32_t> id;
    if (affixes) {
      symbol.clear();
      if (start != 0) symbol += prefix_;
      symbol += ch;
      if (i == piece.size()) symbol += suffix_;
      auto it = vocab_.find(symbol);
      if (it != vocab_.end()) id = it->second;
      ch = symbol;
    } else {
      id = char_id(ch, cp);
    }
    if (id) {
      if (unk_pending) {
        ids.push_back(*unk_id_);
        unk_pending = false;
      }
      ids.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) ids.push_back(byte_fallback_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_pending && !fuse_unk_) ids.push_back(*unk_id_);
      unk_pending = true;
    }
    // Without an unknown token the character is dropped, as HF does.
  }
  if (unk_pending) ids.push_back(*unk_id_);
}

void BpeModel::merge_linear(std::vector<int32_t>& ids) const {
  const size_t n0 = ids.size();
  if (n0 < 2) return;
  std::vector<MergeTable::Merge> pair(n0 - 1);  // pair[i]: merge of (ids[i], ids[i+1])
  constexpr uint32_t kNone = ~0u;
  auto lookup = [&](size_t i) {
    const MergeTable::Merge* m = merges_.find(ids[i], ids[i + 1]);
    return m ? *m : MergeTable::Merge{kNone, -1};
  };
  for (size_t i = 0; i + 1 < n0; ++i) pair[i] = lookup(i);
  size_t n = n0;
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (pair[i].rank < pair[best].rank) best = i;
    if (pair[best].rank == kNone) break;
    ids[best] = pair[best].new_id;
    ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
    pair.erase(pair.begin() + static_cast<ptrdiff_t>(best));
    --n;
    if (best > 0) pair[best - 1] = lookup(best - 1);
    if (best + 1 < n) pair[best] = lookup(best);
  }
}

void BpeModel::merge_heap(std::vector<int32_t>& ids) const {
  const size_t n = ids.size();
  if (n < 2) return;
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Entry {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Sym> sym(n);
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1,
              true};
  }
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  for (size_t i = 0; i + 1 < n; ++i) {
    if (const auto* m = merges_.find(ids[i], ids[i + 1]))
      heap.push({m->rank, static_cast<uint32_t>(i), m->new_id});
  }
  while (!heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    Sym& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    Sym& right = sym[left.next];
    const MergeTable::Merge* cur = merges_.find(left.id, right.id);
    if (!cur || cur->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      if (const auto* m = merges_.find(sym[left.prev].id, left.id)) {
        heap.push({m->rank, static_cast<uint32_t>(left.prev), m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const auto* m = merges_.find(left.id, sym[left.next].id))
        heap.push({m->rank, top.pos, m->new_id});
    }
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
}

void BpeModel::encode_word(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const {
  PieceCache& cache = cache_[raw_bytes ? 1 : 0];
  if (cache.get(word, out)) return;
  thread_local std::vector<int32_t> ids;  // scratch
  ids.clear();
  initial_symbols(word, raw_bytes, ids);
  if (ids.size() <= 48) {
    merge_linear(ids);
  } else {
    merge_heap(ids);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  cache.put(word, ids.data(), ids.size());
}

void BpeModel::tokenize(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    std::optional<int32_t> whole;
    if (raw_bytes) {
      std::string mapped;
      const auto& alphabet = unicode::byte_level_alphabet();
      for (char c : piece) mapped += alphabet[static_cast<unsigned char>(c)];
      whole = token_to_id(mapped);
    } else {
      whole = token_to_id(piece);
    }
    if (whole) {
      out.push_back(*whole);
      return;
    }
  }
  if (!cut_before_metaspace_ || raw_bytes) {
    encode_word(piece, raw_bytes, out);
    return;
  }
  // Cut before every "▁" that follows another character.
  size_t begin = 0;
  size_t pos = piece.find(kMetaspace, 1);
  while (pos != std::string_view::npos) {
    const bool after_metaspace =
        pos >= kMetaspace.size() &&
        piece.compare(pos - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0;
    if (!after_metaspace && pos > begin) {
      encode_word(piece.substr(begin, pos - begin), false, out);
      begin = pos;
    }
    pos = piece.find(kMetaspace, pos + kMetaspace.size());
  }
  encode_word(piece.substr(begin), false, out);
}

}  // namespace philora::tokenizer
