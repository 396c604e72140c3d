// safetensors files, memory-mapped: one file, or a sharded set through
// model.safetensors.index.json. Tensors are borrowed views into the mapping.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace philora::io {

// One tensor in a safetensors file: a borrowed CPU view plus where it came from.
struct TensorEntry {
  std::string name;
  std::string file;  // path of the file that holds it, for error messages
  Tensor view;       // dtype/shape as stored; data points into the mmap
};

// A read-only mmap of one .safetensors file; the header is parsed and checked
// (offsets inside the file, sizes matching dtype × shape, no overlaps).
// Every view's `storage` shares ownership of the mapping, so a Tensor copied
// out of the file stays valid after the file (or TensorSet) is gone. The
// mapping is read-only: never write through a view. A tensor whose data is not
// aligned to its element size (files not written by the reference writer) is
// copied into an aligned owned buffer instead.
class SafetensorsFile {
 public:
  static Expected<std::shared_ptr<SafetensorsFile>> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;            // start of the mapping (the 8-byte header length)
  size_t map_size_ = 0;            // bytes mapped = file size
  std::shared_ptr<void> mapping_;  // owns the mapping (munmap on last release)
  std::map<std::string, TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint, across one or several files. Views stay valid
// while the TensorSet (or a copy of it) lives.
class TensorSet {
 public:
  // `dir` holds model.safetensors, or model.safetensors.index.json and its shards.
  static Expected<TensorSet> open_model_dir(const std::string& dir);
  // A single file (adapter_model.safetensors, tests).
  static Expected<TensorSet> open_file(const std::string& path);

  const TensorEntry* find(const std::string& name) const;
  std::vector<std::string> names() const;
  size_t size() const { return entries_.size(); }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorEntry*> entries_;
};

// Writes tensors to a safetensors file (tests and tools; any DType) as the reference
// writer does: header padded with spaces to a multiple of 8 bytes, data ordered by
// element size (largest first, then as given) so every tensor stays aligned.
Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors);
// The same with a `__metadata__` map (string -> string).
Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata);

}  // namespace philora::io
