// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): vocabulary, ranked merges,
// unknown token, byte fallback (<0xNN> tokens), fuse_unk, ignore_merges, subword prefix/suffix.
// Encoding one piece applies the lowest-ranked merge first, leftmost first among equal ranks,
// until no merge applies (HF's Word::merge_all, without dropout).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace philora::tokenizer {

// Open-addressing map from a token-id pair to (merge rank, id of the merged token).
class MergeTable {
 public:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, Merge m);  // a later insert of the same pair wins (as in HF)
  const Merge* find(int32_t a, int32_t b) const {
    const uint64_t key = pack(a, b);
    size_t i = hash(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static size_t hash(uint64_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20); }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Bounded, thread-safe cache of piece -> ids (HF keeps one too; results are identical either way).
// An entry is one slot holding the piece and its ids inline, so a lookup touches one or two
// cache lines: 64-byte slots for pieces of up to 22 bytes, 128-byte ones for up to 78 (long runs
// of "▁" in indented code). Longer pieces or results are not cached; a full slot is overwritten.
class PieceCache {
 public:
  PieceCache();
  bool get(std::string_view key, std::vector<int32_t>& out) const;
  void put(std::string_view key, const int32_t* ids, size_t n);

 private:
  template <size_t kBytes, size_t kIds>
  struct alignas(64) Slot {
    uint64_t hash = 0;  // 0: empty
    uint8_t key_len = 0, n_ids = 0;
    char key[kBytes] = {};
    int32_t ids[kIds] = {};
  };
  using Small = Slot<22, 8>;
  using Large = Slot<78, 10>;
  static_assert(sizeof(Small) == 64 && sizeof(Large) == 128);
  static constexpr size_t kShards = 16;
  static constexpr size_t kSmallPerShard = 1024;  // 16 x 1024 x 64 B = 1 MiB
  static constexpr size_t kLargePerShard = 256;   // 16 x 256 x 128 B = 0.5 MiB
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::vector<Small> small;
    std::vector<Large> large;
  };
  std::array<Shard, kShards> shards_;
};

class BpeModel {
 public:
  static Expected<std::unique_ptr<BpeModel>> from_json(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized piece. With `raw_bytes`, the piece's bytes are first
  // mapped through the GPT-2 byte alphabet (a ByteLevel pre-tokenizer ran last).
  void tokenize(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when unknown
  size_t vocab_size() const { return vocab_.size(); }
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  bool byte_fallback() const { return byte_fallback_; }

  // Applies the merges to `ids` in place, two ways; exposed so tests can check they agree.
  void merge_linear(std::vector<int32_t>& ids) const;
  void merge_heap(std::vector<int32_t>& ids) const;

 private:
  BpeModel() = default;
  void initial_symbols(std::string_view piece, bool raw_bytes, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const;
  std::optional<int32_t> char_id(std::string_view ch, uint32_t cp) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // [max id + 1]; empty string for holes
  std::vector<uint8_t> id_present_;       // [max id + 1]
  MergeTable merges_;
  std::vector<int32_t> bmp_ids_;  // [0x10000] id of each BMP character, -1 if none
  std::unordered_map<uint32_t, int32_t> astral_ids_;
  std::array<int32_t, 256> byte_level_ids_{};  // id of each byte's alphabet character, -1 if none
  std::array<int32_t, 256> byte_fallback_ids_{};  // id of <0xNN>, -1 if none
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_;  // continuing_subword_prefix
  std::string suffix_;  // end_of_word_suffix
  // SentencePiece vocabularies never have "▁" after another character inside a token, so no
  // merge crosses the start of a "▁" run: long pieces are cut there and cached word by word.
  bool cut_before_metaspace_ = false;
  mutable PieceCache cache_[2];  // [raw_bytes]
};

}  // namespace philora::tokenizer
