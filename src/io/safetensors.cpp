// safetensors reader and writer. Format (https://github.com/huggingface/safetensors):
//   [u64 little-endian N][N bytes of JSON header][data section]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with
// offsets relative to the data section, plus an optional "__metadata__" string map.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "io/file.h"

namespace philora::io {
namespace {

using json = nlohmann::json;

std::optional<DType> parse_dtype(const std::string& s) {
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  return std::nullopt;
}

// One tensor as the header describes it, before it becomes a view.
struct HeaderEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // [ndim]
  uint64_t begin = 0;          // byte offsets into the data section
  uint64_t end = 0;
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

// Parses and checks one header entry (not yet against the data section size).
Expected<HeaderEntry> parse_entry(const std::string& path, const std::string& name,
                                  const json& info) {
  if (!info.is_object())
    return Status::errorf("{}: tensor '{}': header entry must be an object, found {}", path, name,
                          info.type_name());
  HeaderEntry e;
  e.name = name;
  auto dt = info.find("dtype");
  if (dt == info.end() || !dt->is_string())
    return Status::errorf("{}: tensor '{}': header entry has no string 'dtype'", path, name);
  const std::string dname = dt->get<std::string>();
  std::optional<DType> dtype = parse_dtype(dname);
  if (!dtype)
    return Status::errorf(
        "{}: tensor '{}' has dtype {}, which philora does not load (supported: F32, F16, BF16, "
        "I32, I64)",
        path, name, dname);
  e.dtype = *dtype;

  auto sh = info.find("shape");
  if (sh == info.end() || !sh->is_array())
    return Status::errorf("{}: tensor '{}': header entry has no 'shape' array", path, name);
  if (sh->size() > size_t(Tensor::kMaxDims))
    return Status::errorf("{}: tensor '{}' has {} dimensions, expected at most {}", path, name,
                          sh->size(), Tensor::kMaxDims);
  uint64_t numel = 1;
  for (const json& d : *sh) {
    if (!d.is_number_unsigned())
      return Status::errorf("{}: tensor '{}': shape {} must hold non-negative integers", path, name,
                            sh->dump());
    const uint64_t v = d.get<uint64_t>();
    if (v > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, v, &numel))
      return Status::errorf("{}: tensor '{}': shape {} overflows", path, name, sh->dump());
    e.shape.push_back(int64_t(v));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(e.dtype)), &nbytes))
    return Status::errorf("{}: tensor '{}': shape {} overflows", path, name, sh->dump());

  auto off = info.find("data_offsets");
  if (off == info.end() || !off->is_array() || off->size() != 2 ||
      !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
    return Status::errorf(
        "{}: tensor '{}': 'data_offsets' must be two non-negative integers [begin, end], found {}",
        path, name, off == info.end() ? std::string("nothing") : off->dump());
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  if (e.end < e.begin)
    return Status::errorf("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path,
                          name, e.begin, e.end);
  if (e.end - e.begin != nbytes)
    return Status::errorf(
        "{}: tensor '{}' ({} {}) needs {} bytes, but data_offsets [{}, {}] span {} bytes", path,
        name, dname, shape_str(e.shape), nbytes, e.begin, e.end, e.end - e.begin);
  return e;
}

}  // namespace

Expected<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::errorf("{}: file not found", path);
    return Status::errorf("{}: cannot open: {}", path, std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::errorf("{}: cannot stat: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::errorf("{}: not a regular file", path);
  }
  const size_t file_size = size_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return Status::errorf(
        "{}: truncated safetensors file: {} bytes, expected at least 8 (the header length)", path,
        file_size);
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping outlives the descriptor
  if (map == MAP_FAILED) return Status::errorf("{}: mmap failed: {}", path, std::strerror(map_err));

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map;
  f->map_size_ = file_size;
  f->mapping_ = std::shared_ptr<void>(map, [file_size](void* p) { ::munmap(p, file_size); });

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > file_size - 8)
    return Status::errorf(
        "{}: header length {} exceeds the {} bytes that follow it (file is {} bytes): truncated "
        "or not a safetensors file",
        path, header_len, file_size - 8, file_size);
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  if (header_len == 0 || header_begin[0] != '{')
    return Status::errorf("{}: header does not start with '{{' (not a safetensors file?)", path);

  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::exception& e) {
    return Status::errorf("{}: header is not valid JSON: {}", path, e.what());
  }
  if (!header.is_object())
    return Status::errorf("{}: header must be a JSON object, found {}", path, header.type_name());

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  std::vector<HeaderEntry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object())
        return Status::errorf("{}: __metadata__ must be an object, found {}", path,
                              it->type_name());
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          return Status::errorf("{}: __metadata__['{}'] must be a string, found {}", path, m.key(),
                                m->type_name());
        f->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    PHILORA_ASSIGN_OR_RETURN(HeaderEntry e, parse_entry(path, it.key(), *it));
    if (e.end > data_size)
      return Status::errorf(
          "{}: truncated file or bad data_offsets: tensor '{}' needs bytes [{}, {}) of the data "
          "section, which holds only {} bytes",
          path, e.name, e.begin, e.end, data_size);
    entries.push_back(std::move(e));
  }

  // No two tensors may share bytes (empty tensors occupy none).
  std::vector<const HeaderEntry*> by_offset;
  for (const HeaderEntry& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const HeaderEntry* a, const HeaderEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const HeaderEntry* a = by_offset[i - 1];
    const HeaderEntry* b = by_offset[i];
    if (b->begin < a->end)
      return Status::errorf(
          "{}: tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap in the data "
          "section",
          path, a->name, a->begin, a->end, b->name, b->begin, b->end);
  }

  for (HeaderEntry& e : entries) {
    TensorEntry te;
    te.name = e.name;
    te.file = path;
    const uint8_t* src = bytes + data_start + e.begin;
    const size_t nbytes = size_t(e.end - e.begin);
    te.view.dtype = e.dtype;
    te.view.device = Device::cpu;
    te.view.ndim = int(e.shape.size());
    for (size_t i = 0; i < e.shape.size(); ++i) te.view.shape[i] = e.shape[i];
    if (reinterpret_cast<uintptr_t>(src) % dtype_size(e.dtype) == 0) {
      te.view.data = const_cast<uint8_t*>(src);
      te.view.storage = std::shared_ptr<void>(f->mapping_, te.view.data);  // aliases the mapping
    } else {
      // Misaligned (header not padded by the writer): one aligned copy.
      void* buf = std::aligned_alloc(64, (std::max<size_t>(nbytes, 1) + 63) / 64 * 64);
      if (!buf) return Status::errorf("{}: tensor '{}': out of memory", path, e.name);
      std::memcpy(buf, src, nbytes);
      te.view.data = buf;
      te.view.storage = std::shared_ptr<void>(buf, std::free);
    }
    f->tensors_.emplace(e.name, std::move(te));
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;  // mapping_ unmaps when the last view goes

// ---- TensorSet -----------------------------------------------------------------------------

Expected<TensorSet> TensorSet::open_file(const std::string& path) {
  PHILORA_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, SafetensorsFile::open(path));
  TensorSet set;
  for (const auto& [name, entry] : file->tensors()) set.entries_[name] = &entry;
  set.files_.push_back(std::move(file));
  return set;
}

Expected<TensorSet> TensorSet::open_model_dir(const std::string& dir) {
  const std::string single = join_path(dir, "model.safetensors");
  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  // transformers looks for the single file first, then the index.
  if (is_regular_file(single)) return open_file(single);
  if (!is_regular_file(index_path)) {
    std::string hint;
    if (is_regular_file(join_path(dir, "pytorch_model.bin")) ||
        is_regular_file(join_path(dir, "pytorch_model.bin.index.json")))
      hint = " (pytorch_model.bin checkpoints are not supported: convert them to safetensors)";
    return Status::errorf("{}: no model.safetensors or model.safetensors.index.json{}", dir, hint);
  }

  PHILORA_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    return Status::errorf("{}: not valid JSON: {}", index_path, e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    return Status::errorf("{}: expected an object with a 'weight_map' object", index_path);
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) return Status::errorf("{}: weight_map is empty", index_path);

  // shard file -> the tensors the index places in it
  std::map<std::string, std::vector<std::string>> shards;
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    if (!it->is_string())
      return Status::errorf("{}: weight_map['{}'] must be a file name, found {}", index_path,
                            it.key(), it->type_name());
    shards[it->get<std::string>()].push_back(it.key());
  }

  TensorSet set;
  for (const auto& [shard, listed] : shards) {
    const std::string shard_path = join_path(dir, shard);
    if (!is_regular_file(shard_path))
      return Status::errorf(
          "{}: shard '{}' (listed for tensor '{}'{}) is missing: {} not found", index_path, shard,
          listed.front(),
          listed.size() > 1 ? fmt::format(" and {} others", listed.size() - 1) : std::string(),
          shard_path);
    PHILORA_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file,
                             SafetensorsFile::open(shard_path));
    for (const std::string& name : listed)
      if (!file->tensors().count(name))
        return Status::errorf("{}: lists tensor '{}' in shard '{}', but {} does not contain it",
                              index_path, name, shard, shard_path);
    for (const auto& [name, entry] : file->tensors()) {
      auto [it, inserted] = set.entries_.emplace(name, &entry);
      if (!inserted)
        return Status::errorf("tensor '{}' appears in two files: {} and {}", name, it->second->file,
                              shard_path);
    }
    set.files_.push_back(std::move(file));
  }
  return set;
}

const TensorEntry* TensorSet::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second;
}

std::vector<std::string> TensorSet::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

// ---- writer --------------------------------------------------------------------------------

Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors) {
  return write_safetensors(path, tensors, {});
}

Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      return Status::errorf("{}: invalid tensor name '{}'", path, name);
    if (!seen.insert(name).second) return Status::errorf("{}: tensor '{}' given twice", path, name);
    if (t.device != Device::cpu)
      return Status::errorf("{}: tensor '{}' is on {}, expected cpu", path, name,
                            device_name(t.device));
    if (t.data == nullptr && t.nbytes() > 0)
      return Status::errorf("{}: tensor '{}' {} has no data", path, name, t.shape_str());
  }
  // Largest elements first (stable), so every offset is a multiple of its element size.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype) > dtype_size(tensors[b].second.dtype);
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    header[name] = {{"dtype", std::string(dtype_name(t.dtype))},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return Status::errorf("{}: cannot open for writing: {}", path, std::strerror(errno));
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(text.data(), std::streamsize(text.size()));
  for (size_t i : order) {
    const Tensor& t = tensors[i].second;
    if (t.nbytes() > 0) out.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes()));
  }
  out.flush();
  if (!out) return Status::errorf("{}: write failed: {}", path, std::strerror(errno));
  return Status();
}

}  // namespace philora::io
