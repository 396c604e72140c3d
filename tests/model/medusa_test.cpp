// Medusa heads in LoRAX's layout: loaded from a directory the test writes
// with random weights, their logits against a float64 reference of the head
// formula written here, their drafts against that reference's argmax, and
// every malformed directory refused with a message that says what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/medusa.h"
#include "model/phi3.h"
#include "model/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace philora {
namespace {

const fs::path kCase = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";

// A host f32 matrix with its storage.
struct Mat {
  std::vector<float> v;
  int64_t rows = 0, cols = 0;
  Tensor t() { return Tensor(v.data(), DType::f32, {rows, cols}); }
  Tensor vec() { return Tensor(v.data(), DType::f32, {cols}); }
  double at(int64_t r, int64_t c) const { return v[size_t(r * cols + c)]; }
};

Mat random_mat(int64_t rows, int64_t cols, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-scale, scale);
  Mat m{std::vector<float>(size_t(rows * cols)), rows, cols};
  for (float& x : m.v) x = u(rng);
  return m;
}

struct Heads {
  std::vector<std::vector<Mat>> w, b;  // [K][L]
  std::vector<Mat> out;                // [K] or empty (the model's lm_head)
};

class Medusa : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = model::load_config((kCase / "model").string());
    ASSERT_TRUE(c.ok()) << c.status().message();
    config_ = *c;
    auto tensors = io::TensorSet::open_model_dir((kCase / "model").string());
    ASSERT_TRUE(tensors.ok()) << tensors.status().message();
    auto weights = model::load_weights(*tensors, config_, backend_);
    ASSERT_TRUE(weights.ok()) << weights.status().message();
    model_ = std::make_unique<model::Phi3ForCausalLM>(config_, std::move(*weights), backend_);
    const Tensor& lm = model_->lm_head();  // f32 on the CPU backend
    lm_head_ = Mat{std::vector<float>(lm.ptr<float>(), lm.ptr<float>() + lm.numel()), lm.rows(),
                   lm.cols()};
    dir_ = fs::temp_directory_path() / ("philora_medusa_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Heads make(int64_t k, int64_t l, bool own_out, uint32_t seed) {
    std::mt19937 rng(seed);
    const int64_t h = config_.hidden_size;
    Heads heads;
    heads.w.resize(size_t(k));
    heads.b.resize(size_t(k));
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < l; ++j) {
        heads.w[size_t(i)].push_back(random_mat(h, h, 0.3f, rng));
        heads.b[size_t(i)].push_back(random_mat(1, h, 0.3f, rng));
      }
      if (own_out) heads.out.push_back(random_mat(config_.vocab_size, h, 0.2f, rng));
    }
    return heads;
  }
  void write(Heads& heads, const std::string& config_json, const std::string& prefix = "",
             std::vector<std::pair<std::string, Tensor>> extra = {}) {
    std::ofstream(dir_ / "config.json") << config_json;
    std::vector<std::pair<std::string, Tensor>> t;
    for (size_t i = 0; i < heads.w.size(); ++i) {
      for (size_t j = 0; j < heads.w[i].size(); ++j) {
        const std::string p = prefix + std::to_string(i) + "." + std::to_string(j) + ".linear.";
        t.push_back({p + "weight", heads.w[i][j].t()});
        t.push_back({p + "bias", heads.b[i][j].vec()});
      }
      if (!heads.out.empty())
        t.push_back({prefix + std::to_string(i) + "." + std::to_string(heads.w[i].size()) + ".weight",
                     heads.out[i].t()});
    }
    for (auto& e : extra) t.push_back(e);
    const Status s = io::write_safetensors((dir_ / "medusa_lm_head.safetensors").string(), t);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  static std::string config_json(int64_t k, int64_t l) {
    return "{\"medusa_num_heads\": " + std::to_string(k) + ", \"medusa_num_layers\": " +
           std::to_string(l) + ", \"version\": 2, \"base_model_name_or_path\": \"x\"}";
  }

  // Head i's logits of hidden row r in float64: x = h; x += silu(W x + b); out x.
  std::vector<double> reference(const Heads& heads, size_t i, const Mat& hidden, int64_t r) const {
    const int64_t n = hidden.cols;
    std::vector<double> x(static_cast<size_t>(n));
    for (int64_t c = 0; c < n; ++c) x[size_t(c)] = hidden.at(r, c);
    for (size_t j = 0; j < heads.w[i].size(); ++j) {
      std::vector<double> y(static_cast<size_t>(n));
      for (int64_t o = 0; o < n; ++o) {
        double g = heads.b[i][j].at(0, o);
        for (int64_t c = 0; c < n; ++c) g += heads.w[i][j].at(o, c) * x[size_t(c)];
        y[size_t(o)] = x[size_t(o)] + g / (1.0 + std::exp(-g));
      }
      x = y;
    }
    const Mat& out = heads.out.empty() ? lm_head_ : heads.out[i];
    std::vector<double> logits(size_t(out.rows));
    for (int64_t v = 0; v < out.rows; ++v) {
      double s = 0;
      for (int64_t c = 0; c < n; ++c) s += out.at(v, c) * x[size_t(c)];
      logits[size_t(v)] = s;
    }
    return logits;
  }

  // Loads the heads, checks every head's logits and the drafts of `rows` random hidden rows.
  void check(Heads& heads, int64_t rows) {
    auto m = model::MedusaHeads::load(dir_.string(), config_, backend_);
    ASSERT_TRUE(m.ok()) << m.status().message();
    ASSERT_EQ(m->num_heads(), int64_t(heads.w.size()));
    EXPECT_EQ(m->own_output(), !heads.out.empty());
    std::mt19937 rng(7);
    Mat hidden = random_mat(rows, config_.hidden_size, 2.0f, rng);
    const std::vector<int32_t> drafts = m->draft(backend_, hidden.t(), model_->lm_head());
    ASSERT_EQ(drafts.size(), size_t(rows * m->num_heads()));
    int64_t argmax_checked = 0;
    for (int64_t i = 0; i < m->num_heads(); ++i) {
      const Tensor got = m->logits(backend_, hidden.t(), model_->lm_head(), i);
      ASSERT_EQ(got.rows(), rows);
      ASSERT_EQ(got.cols(), config_.vocab_size);
      for (int64_t r = 0; r < rows; ++r) {
        const std::vector<double> want = reference(heads, size_t(i), hidden, r);
        double scale = 0;
        for (double w : want) scale = std::max(scale, std::fabs(w));
        for (int64_t v = 0; v < got.cols(); ++v)
          ASSERT_NEAR(got.ptr<float>()[r * got.cols() + v], want[size_t(v)], 1e-4 * scale)
              << "head " << i << " row " << r << " token " << v;
        // The draft is the reference's argmax where the top two are apart.
        std::vector<double> sorted = want;
        std::sort(sorted.rbegin(), sorted.rend());
        if (sorted[0] - sorted[1] > 1e-3 * scale) {
          const auto best = std::max_element(want.begin(), want.end()) - want.begin();
          EXPECT_EQ(drafts[size_t(r * m->num_heads() + i)], int32_t(best)) << "head " << i << " row " << r;
          ++argmax_checked;
        }
      }
    }
    EXPECT_GT(argmax_checked, rows * m->num_heads() / 2) << "too many near ties to check drafts";
  }

  CpuBackend backend_{2};
  model::Phi3Config config_;
  std::unique_ptr<model::Phi3ForCausalLM> model_;
  Mat lm_head_;
  fs::path dir_;
};

TEST_F(Medusa, HeadsOnTheModelsLmHeadMatchFloat64) {  // LoRAX's MedusaV2
  Heads h = make(4, 1, false, 1);
  write(h, config_json(4, 1));
  check(h, 5);
}

TEST_F(Medusa, HeadsWithTheirOwnOutputAndTwoBlocksMatchFloat64) {  // MedusaV1
  Heads h = make(3, 2, true, 2);
  write(h, config_json(3, 2));
  check(h, 4);
}

TEST_F(Medusa, FasterDecodingsPrefixedNamesLoad) {
  Heads h = make(2, 1, true, 3);
  write(h, config_json(2, 1), "medusa_head.");
  check(h, 2);
}

TEST_F(Medusa, MalformedDirectoriesAreRefusedWithTheReason) {
  struct Case {
    const char* what;
    std::function<void()> setup;
    std::vector<std::string> needles;
  };
  std::mt19937 rng(4);
  Mat wrong = random_mat(config_.hidden_size + 1, config_.hidden_size, 0.1f, rng);
  Mat spare = random_mat(1, 3, 0.1f, rng);
  const Case cases[] = {
      {"no config", [&] { fs::remove(dir_ / "config.json"); }, {"config.json"}},
      {"bad JSON", [&] { std::ofstream(dir_ / "config.json") << "{nope"; }, {"not valid JSON"}},
      {"no heads field",
       [&] { std::ofstream(dir_ / "config.json") << R"({"medusa_num_layers": 1})"; },
       {"medusa_num_heads"}},
      {"heads 0",
       [&] {
         std::ofstream(dir_ / "config.json") << R"({"medusa_num_heads": 0, "medusa_num_layers": 1})";
       },
       {"medusa_num_heads", "1 to 64"}},
      {"layers not an integer",
       [&] {
         std::ofstream(dir_ / "config.json") << R"({"medusa_num_heads": 2, "medusa_num_layers": "1"})";
       },
       {"medusa_num_layers"}},
      {"more heads than written",
       [&] {
         Heads h = make(2, 1, false, 5);
         write(h, config_json(3, 1));
       },
       {"missing tensor '2.0.linear.weight'"}},
      {"fewer heads than written",
       [&] {
         Heads h = make(3, 1, false, 5);
         write(h, config_json(2, 1));
       },
       {"unexpected tensor '2.0.linear"}},
      {"wrong shape",
       [&] {
         Heads h = make(1, 1, false, 5);
         h.w[0][0] = wrong;
         write(h, config_json(1, 1));
       },
       {"0.0.linear.weight", "shape"}},
      {"two blocks on the shared lm_head",
       [&] {
         Heads h = make(2, 2, false, 5);
         write(h, config_json(2, 2));
       },
       {"medusa_num_layers = 1"}},
      {"a stray tensor",
       [&] {
         Heads h = make(1, 1, false, 5);
         write(h, config_json(1, 1), "", {{"stray", spare.t()}});
       },
       {"unexpected tensor 'stray'"}},
      {"a pickle only",
       [&] {
         fs::remove(dir_ / "medusa_lm_head.safetensors");
         std::ofstream(dir_ / "medusa_lm_head.pt") << "x";
         std::ofstream(dir_ / "config.json") << config_json(1, 1);
       },
       {"medusa_lm_head.pt", "safetensors"}},
  };
  for (const Case& c : cases) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    Heads ok = make(1, 1, false, 9);
    write(ok, config_json(1, 1));
    c.setup();
    auto m = model::MedusaHeads::load(dir_.string(), config_, backend_);
    ASSERT_FALSE(m.ok()) << c.what;
    for (const std::string& n : c.needles)
      EXPECT_NE(m.status().message().find(n), std::string::npos)
          << c.what << ": " << m.status().message();
  }
}

}  // namespace
}  // namespace philora
