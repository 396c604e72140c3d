// safetensors reader/writer: round trips of every dtype, sharded checkpoints, and one
// test per malformed-file case asserting the message names file, tensor and numbers.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace philora::io {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "philora_io_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A file made by hand: 8-byte length, `header` as given (no padding), then `data`.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((n >> (8 * i)) & 0xff);
  write_bytes(path, bytes + header + data);
}

// A tensor that owns a copy of `values` (stored as type T, tagged `dtype`).
template <typename T>
Tensor owned(const std::vector<T>& values, DType dtype, std::initializer_list<int64_t> shape) {
  auto buf = std::make_shared<std::vector<T>>(values);
  Tensor t(buf->data(), dtype, shape);
  t.storage = buf;
  return t;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Status open_error(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  EXPECT_FALSE(f.ok()) << "opening " << path << " should fail";
  return f.status();
}

// ---- round trips ---------------------------------------------------------------------------

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  const std::vector<float> f32 = random_floats(6, 1);
  std::vector<uint16_t> f16, bf16;
  for (float x : random_floats(7, 2)) f16.push_back(f32_to_f16(x));
  for (float x : random_floats(12, 3)) bf16.push_back(f32_to_bf16(x));
  const std::vector<int32_t> i32 = {-7, 0, 3, 2147483647, -2147483647 - 1};
  const std::vector<int64_t> i64 = {-1, 1LL << 40, 5};

  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a.f16", owned(f16, DType::f16, {7})},  // odd byte count first, to test ordering
      {"b.f32", owned(f32, DType::f32, {2, 3})}, {"c.bf16", owned(bf16, DType::bf16, {2, 2, 3})},
      {"d.i32", owned(i32, DType::i32, {5})},    {"e.i64", owned(i64, DType::i64, {1, 3})},
  };
  const std::string path = dir.file("t.safetensors");
  ASSERT_TRUE(write_safetensors(path, tensors).ok());

  // The header is padded with spaces to a multiple of 8 bytes.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[0 + 8], '{');

  auto set = TensorSet::open_file(path);
  ASSERT_TRUE(set.ok()) << set.status().message();
  ASSERT_EQ(set->size(), tensors.size());
  for (const auto& [name, src] : tensors) {
    const TensorEntry* e = set->find(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_EQ(e->name, name);
    EXPECT_EQ(e->file, path);
    EXPECT_EQ(e->view.dtype, src.dtype) << name;
    EXPECT_EQ(e->view.device, Device::cpu);
    EXPECT_EQ(e->view.shape_str(), src.shape_str()) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(e->view.data) % dtype_size(src.dtype), 0u) << name;
    ASSERT_EQ(e->view.nbytes(), src.nbytes());
    EXPECT_EQ(std::memcmp(e->view.data, src.data, src.nbytes()), 0) << name;
  }
  EXPECT_EQ(set->find("missing"), nullptr);
  EXPECT_EQ(set->names(), (std::vector<std::string>{"a.f16", "b.f32", "c.bf16", "d.i32", "e.i64"}));
}

TEST(Safetensors, MetadataAndScalarAndEmptyTensor) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"scalar", owned(std::vector<float>{2.5f}, DType::f32, {})},
      {"empty", owned(std::vector<float>{}, DType::f32, {0, 4})},
  };
  ASSERT_TRUE(write_safetensors(path, tensors, {{"format", "pt"}, {"note", "x y"}}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->metadata().at("note"), "x y");
  EXPECT_EQ((*f)->metadata().size(), 2u);
  const Tensor& s = (*f)->tensors().at("scalar").view;
  EXPECT_EQ(s.ndim, 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(*s.ptr<float>(), 2.5f);
  EXPECT_EQ((*f)->tensors().at("empty").view.shape_str(), "(0, 4)");
}

TEST(Safetensors, ViewOutlivesTheTensorSet) {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  const std::vector<float> values = random_floats(4096, 7);  // several pages
  ASSERT_TRUE(write_safetensors(path, {{"w", owned(values, DType::f32, {64, 64})}}).ok());
  Tensor copy;
  {
    auto set = TensorSet::open_file(path);
    ASSERT_TRUE(set.ok());
    copy = set->find("w")->view;
  }  // the set and its SafetensorsFile are gone; the mapping must not be
  fs::remove(path);
  ASSERT_NE(copy.storage, nullptr);
  EXPECT_EQ(std::memcmp(copy.data, values.data(), values.size() * 4), 0);
}

TEST(Safetensors, MisalignedDataIsCopiedAligned) {
  // Header of odd length, unpadded: the data section starts at an odd address.
  TempDir dir;
  const std::string path = dir.file("odd.safetensors");
  std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  if (header.size() % 2 == 0) header += " ";
  const std::vector<float> values = {1.5f, -2.0f, 3.25f};
  write_raw(path, header, std::string(reinterpret_cast<const char*>(values.data()), 12));
  auto set = TensorSet::open_file(path);
  ASSERT_TRUE(set.ok()) << set.status().message();
  const Tensor& t = set->find("x")->view;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 4, 0u);
  EXPECT_EQ(t.ptr<float>()[0], 1.5f);
  EXPECT_EQ(t.ptr<float>()[1], -2.0f);
  EXPECT_EQ(t.ptr<float>()[2], 3.25f);
}

// ---- malformed files -----------------------------------------------------------------------

TEST(SafetensorsErrors, MissingFile) {
  TempDir dir;
  Status s = open_error(dir.file("nope.safetensors"));
  EXPECT_HAS(s.message(), "nope.safetensors");
  EXPECT_HAS(s.message(), "not found");
}

TEST(SafetensorsErrors, ShorterThanHeaderLength) {
  TempDir dir;
  const std::string path = dir.file("short.safetensors");
  write_bytes(path, "abc");
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "3 bytes");
  EXPECT_HAS(s.message(), "at least 8");
}

TEST(SafetensorsErrors, HeaderLengthBeyondFile) {
  TempDir dir;
  const std::string path = dir.file("long.safetensors");
  std::string bytes(8, '\0');
  bytes[0] = char(200);  // claims 200 header bytes
  write_bytes(path, bytes + "{}");
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "header length 200");
  EXPECT_HAS(s.message(), "2 bytes");
}

TEST(SafetensorsErrors, HeaderNotJson) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  write_raw(path, R"({"x": {"dtype": "F32", )", "");
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "not valid JSON");
}

TEST(SafetensorsErrors, NotASafetensorsFile) {
  TempDir dir;
  const std::string path = dir.file("text.safetensors");
  write_raw(path, "hello world", "");
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "does not start with '{'");
}

TEST(SafetensorsErrors, UnsupportedDtypesNamed) {
  TempDir dir;
  for (const char* dtype : {"F64", "I8", "U8", "F8_E4M3", "BOOL", "Q4"}) {
    const std::string path = dir.file(std::string(dtype) + ".safetensors");
    write_raw(
        path,
        fmt::format(R"({{"layer.w":{{"dtype":"{}","shape":[2],"data_offsets":[0,16]}}}})", dtype),
        std::string(16, '\0'));
    Status s = open_error(path);
    EXPECT_HAS(s.message(), path);
    EXPECT_HAS(s.message(), "'layer.w'");
    EXPECT_HAS(s.message(), std::string("dtype ") + dtype);
    EXPECT_HAS(s.message(), "F32, F16, BF16");
  }
}

TEST(SafetensorsErrors, OffsetsDisagreeWithShape) {
  TempDir dir;
  const std::string path = dir.file("size.safetensors");
  write_raw(path, R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
            std::string(24, '\0'));
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "'w'");
  EXPECT_HAS(s.message(), "(2, 3)");
  EXPECT_HAS(s.message(), "needs 24 bytes");
  EXPECT_HAS(s.message(), "span 20 bytes");
}

TEST(SafetensorsErrors, OffsetsReversed) {
  TempDir dir;
  const std::string path = dir.file("rev.safetensors");
  write_raw(path, R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
            std::string(8, '\0'));
  Status s = open_error(path);
  EXPECT_HAS(s.message(), "'w'");
  EXPECT_HAS(s.message(), "[8, 4]");
}

TEST(SafetensorsErrors, TruncatedFile) {
  TempDir dir;
  const std::string path = dir.file("trunc.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"first", owned(random_floats(4, 1), DType::f32, {4})},
                                       {"second", owned(random_floats(4, 2), DType::f32, {2, 2})}})
                  .ok());
  fs::resize_file(path, fs::file_size(path) - 5);
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "truncated");
  EXPECT_HAS(s.message(), "'second'");
  EXPECT_HAS(s.message(), "[16, 32)");
  EXPECT_HAS(s.message(), "only 27 bytes");
}

TEST(SafetensorsErrors, OverlappingTensors) {
  TempDir dir;
  const std::string path = dir.file("overlap.safetensors");
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            std::string(16, '\0'));
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "'a'");
  EXPECT_HAS(s.message(), "'b'");
  EXPECT_HAS(s.message(), "overlap");
}

TEST(SafetensorsErrors, BadShapeAndOffsets) {
  TempDir dir;
  struct Case {
    const char* entry;
    const char* expect;
  } cases[] = {
      {R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})", "non-negative integers"},
      {R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", "non-negative integers"},
      {R"({"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]})",
       "5 dimensions, expected at most 4"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", "'data_offsets' must be two"},
      {R"({"dtype":"F32","shape":[1]})", "'data_offsets' must be two"},
      {R"({"shape":[1],"data_offsets":[0,4]})", "no string 'dtype'"},
      {R"({"dtype":"F32","data_offsets":[0,4]})", "no 'shape' array"},
      {R"([1,2])", "must be an object"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string path = dir.file(fmt::format("case{}.safetensors", i++));
    write_raw(path, fmt::format(R"({{"t.w":{}}})", c.entry), std::string(4, '\0'));
    Status s = open_error(path);
    EXPECT_HAS(s.message(), path) << c.entry;
    EXPECT_HAS(s.message(), "'t.w'") << c.entry;
    EXPECT_HAS(s.message(), c.expect) << c.entry;
  }
}

TEST(SafetensorsErrors, MetadataMustBeStrings) {
  TempDir dir;
  const std::string path = dir.file("meta.safetensors");
  write_raw(path, R"({"__metadata__":{"format":"pt","step":3}})", "");
  Status s = open_error(path);
  EXPECT_HAS(s.message(), path);
  EXPECT_HAS(s.message(), "__metadata__['step']");
  EXPECT_HAS(s.message(), "number");
}

TEST(SafetensorsErrors, WriterRefusesBadInput) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  Tensor t = owned(random_floats(2, 1), DType::f32, {2});
  Status dup = write_safetensors(path, {{"x", t}, {"x", t}});
  EXPECT_FALSE(dup.ok());
  EXPECT_HAS(dup.message(), "'x' given twice");
  Tensor null_data(nullptr, DType::f32, {3});
  Status null = write_safetensors(path, {{"y", null_data}});
  EXPECT_FALSE(null.ok());
  EXPECT_HAS(null.message(), "'y'");
  Status bad_dir = write_safetensors(dir.file("no/such/dir.safetensors"), {{"x", t}});
  EXPECT_FALSE(bad_dir.ok());
  EXPECT_HAS(bad_dir.message(), "no/such/dir.safetensors");
}

// ---- checkpoint directories ----------------------------------------------------------------

class ShardedDir : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = random_floats(6, 11);
    b_ = random_floats(4, 12);
    c_ = random_floats(3, 13);
    ASSERT_TRUE(write_safetensors(dir_.file("model-00001-of-00002.safetensors"),
                                  {{"model.a", owned(a_, DType::f32, {2, 3})},
                                   {"model.b", owned(b_, DType::f32, {4})}})
                    .ok());
    ASSERT_TRUE(write_safetensors(dir_.file("model-00002-of-00002.safetensors"),
                                  {{"lm_head.weight", owned(c_, DType::f32, {3})}})
                    .ok());
  }
  void write_index(const std::string& weight_map) {
    write_bytes(dir_.file("model.safetensors.index.json"),
                R"({"metadata":{"total_size":52},"weight_map":)" + weight_map + "}");
  }
  std::string index_path() const { return dir_.file("model.safetensors.index.json"); }
  const char* kGoodMap = R"({"model.a":"model-00001-of-00002.safetensors",)"
                         R"("model.b":"model-00001-of-00002.safetensors",)"
                         R"("lm_head.weight":"model-00002-of-00002.safetensors"})";
  TempDir dir_;
  std::vector<float> a_, b_, c_;
};

TEST_F(ShardedDir, OpensEveryShardOnce) {
  write_index(kGoodMap);
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->size(), 3u);
  const TensorEntry* a = set->find("model.a");
  const TensorEntry* b = set->find("model.b");
  const TensorEntry* c = set->find("lm_head.weight");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->file, dir_.file("model-00001-of-00002.safetensors"));
  EXPECT_EQ(c->file, dir_.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(std::memcmp(a->view.data, a_.data(), 24), 0);
  EXPECT_EQ(std::memcmp(c->view.data, c_.data(), 12), 0);
  // Same shard: the views share one owner (one mapping); different shards do not.
  auto same_owner = [](const Tensor& x, const Tensor& y) {
    return !x.storage.owner_before(y.storage) && !y.storage.owner_before(x.storage);
  };
  EXPECT_TRUE(same_owner(a->view, b->view));
  EXPECT_FALSE(same_owner(a->view, c->view));
}

TEST_F(ShardedDir, SingleFileWins) {
  // transformers looks for model.safetensors first; the index is then not read.
  write_index("not json at all");
  ASSERT_TRUE(
      write_safetensors(dir_.file("model.safetensors"), {{"only", owned(c_, DType::f32, {3})}})
          .ok());
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->names(), std::vector<std::string>{"only"});
}

TEST_F(ShardedDir, MissingShard) {
  write_index(R"({"model.a":"model-00001-of-00002.safetensors",)"
              R"("lm_head.weight":"model-00003-of-00003.safetensors"})");
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(set.ok());
  EXPECT_HAS(set.status().message(), index_path());
  EXPECT_HAS(set.status().message(), "model-00003-of-00003.safetensors");
  EXPECT_HAS(set.status().message(), "'lm_head.weight'");
  EXPECT_HAS(set.status().message(), "missing");
}

TEST_F(ShardedDir, TensorNotInItsShard) {
  write_index(R"({"model.a":"model-00001-of-00002.safetensors",)"
              R"("model.zzz":"model-00002-of-00002.safetensors"})");
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(set.ok());
  EXPECT_HAS(set.status().message(), index_path());
  EXPECT_HAS(set.status().message(), "'model.zzz'");
  EXPECT_HAS(set.status().message(), "model-00002-of-00002.safetensors");
  EXPECT_HAS(set.status().message(), "does not contain it");
}

TEST_F(ShardedDir, TensorInTwoShards) {
  ASSERT_TRUE(write_safetensors(dir_.file("model-00002-of-00002.safetensors"),
                                {{"lm_head.weight", owned(c_, DType::f32, {3})},
                                 {"model.b", owned(b_, DType::f32, {4})}})
                  .ok());
  write_index(kGoodMap);
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(set.ok());
  EXPECT_HAS(set.status().message(), "'model.b'");
  EXPECT_HAS(set.status().message(), "two files");
  EXPECT_HAS(set.status().message(), "model-00001-of-00002.safetensors");
  EXPECT_HAS(set.status().message(), "model-00002-of-00002.safetensors");
}

TEST_F(ShardedDir, BadIndex) {
  write_index("[1, 2");
  auto bad_json = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(bad_json.ok());
  EXPECT_HAS(bad_json.status().message(), index_path());
  EXPECT_HAS(bad_json.status().message(), "not valid JSON");

  write_bytes(index_path(), R"({"metadata": {}})");
  auto no_map = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(no_map.ok());
  EXPECT_HAS(no_map.status().message(), "weight_map");

  write_index(R"({"model.a": 3})");
  auto bad_value = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(bad_value.ok());
  EXPECT_HAS(bad_value.status().message(), "weight_map['model.a']");
}

TEST_F(ShardedDir, CorruptShardNamesTheShard) {
  write_index(kGoodMap);
  const std::string shard = dir_.file("model-00002-of-00002.safetensors");
  fs::resize_file(shard, fs::file_size(shard) - 1);
  auto set = TensorSet::open_model_dir(dir_.path());
  ASSERT_FALSE(set.ok());
  EXPECT_HAS(set.status().message(), shard);
  EXPECT_HAS(set.status().message(), "'lm_head.weight'");
}

TEST(SafetensorsDir, NoCheckpoint) {
  TempDir dir;
  auto set = TensorSet::open_model_dir(dir.path());
  ASSERT_FALSE(set.ok());
  EXPECT_HAS(set.status().message(), dir.path());
  EXPECT_HAS(set.status().message(), "no model.safetensors");
  write_bytes(dir.file("pytorch_model.bin"), "x");
  auto bin = TensorSet::open_model_dir(dir.path());
  ASSERT_FALSE(bin.ok());
  EXPECT_HAS(bin.status().message(), "pytorch_model.bin");
}

}  // namespace
}  // namespace philora::io
