#include "ops/harness.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "backend/cpu/cpu_backend.h"
#include "ops/bf16_emulator.h"

namespace philora::optest {

// ---- comparison ----------------------------------------------------------------

std::string compare(const Output& out, const Expect& expect, double tolerance,
                    const std::string& against, Errors* errors) {
  const std::string what = fmt::format("output '{}' vs {}", expect.name, against);
  if (out.got.size() != expect.want.size() || expect.cols <= 0 ||
      (!expect.role.empty() && expect.role.size() != expect.want.size()) ||
      (!expect.base.empty() && expect.base.size() != expect.want.size()))
    return fmt::format("{}: {} elements, expected {} ({} cols)", what, out.got.size(),
                       expect.want.size(), expect.cols);
  const int64_t cols = expect.cols, rows = expect.rows();
  auto at = [&](size_t i) { return fmt::format("[{}, {}]", int64_t(i) / cols, int64_t(i) % cols); };

  double err2 = 0, ref2 = 0;                        // over value elements
  std::vector<double> row_err2(size_t(rows), 0.0);  // [rows]
  int64_t value_rows = 0, values = 0, non_finite = 0, changed = 0, bad_refs = 0;
  size_t first_non_finite = 0, first_changed = 0, first_bad_ref = 0;
  for (int64_t r = 0; r < rows; ++r) {
    bool row_has_value = false;
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = size_t(r * cols + c);
      const float got = out.got[i];
      const double want = expect.want[i];
      switch (expect.role_at(i)) {
        case Role::value: {
          ++values;
          row_has_value = true;
          if (!std::isfinite(want)) {  // the reference itself (the cpu backend) is broken
            if (bad_refs++ == 0) first_bad_ref = i;
            continue;
          }
          if (!std::isfinite(got)) {
            if (non_finite++ == 0) first_non_finite = i;
            continue;
          }
          const double base = expect.base.empty() ? 0.0 : expect.base[i];
          err2 += (double(got) - want) * (double(got) - want);
          ref2 += (want - base) * (want - base);
          row_err2[size_t(r)] += (double(got) - want) * (double(got) - want);
          break;
        }
        case Role::keep: {
          const bool same = std::isnan(want) ? std::isnan(got) : double(got) == want;
          if (!same && changed++ == 0) first_changed = i;
          break;
        }
        case Role::free:
          break;
      }
    }
    value_rows += row_has_value;
  }

  std::string msg;
  if (bad_refs > 0)
    return fmt::format("{}: the reference holds {} NaN/inf values, first at {}: {}", what, bad_refs,
                       at(first_bad_ref), expect.want[first_bad_ref]);
  if (values == 0 || ref2 == 0)
    return fmt::format("{}: the reference has no nonzero value to compare: a degenerate case",
                       what);
  const double err = std::sqrt(err2 / ref2);
  const double row_rms = std::sqrt(ref2 / double(value_rows));  // typical ‖ref row‖
  const auto worst = std::max_element(row_err2.begin(), row_err2.end());
  const int64_t worst_row = worst - row_err2.begin();
  const double worst_err = std::sqrt(*worst) / row_rms;
  if (errors) *errors = {err, worst_err};
  if (err > tolerance || worst_err > kRowSlack * tolerance) {
    // The element of the worst row that differs most.
    size_t j = size_t(worst_row * cols);
    double jd = -1;
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = size_t(worst_row * cols + c);
      if (expect.role_at(i) != Role::value || !std::isfinite(out.got[i])) continue;
      const double d = std::abs(double(out.got[i]) - expect.want[i]);
      if (d > jd) jd = d, j = i;
    }
    msg += fmt::format(
        "\n  normalised error {:.3e} (tolerance {:.0e}), worst row {}: {:.3e} of the typical row "
        "norm (tolerance {:.0e}); worst element {}: got {:.9g} want {:.9g}",
        err, tolerance, worst_row, worst_err, kRowSlack * tolerance, at(j), out.got[j],
        expect.want[j]);
  }
  if (non_finite > 0)
    msg += fmt::format("\n  {} of {} values are NaN/inf (never written?), first at {}: got {}",
                       non_finite, values, at(first_non_finite), out.got[first_non_finite]);
  if (changed > 0)
    msg += fmt::format(
        "\n  {} elements changed that the op must leave alone, first at {}: got {:.9g} want {:.9g}",
        changed, at(first_changed), out.got[first_changed], expect.want[first_changed]);
  return msg.empty() ? msg : what + ":" + msg;
}

// A copy of `out` with one element broken in each way the comparison must
// catch; each must be rejected, or the case could never fail.
static void expect_rejects_corruption(const Output& out, const Expect& expect, double tolerance,
                                      Rng& rng) {
  std::vector<size_t> values, keeps;
  double ref2 = 0;
  for (size_t i = 0; i < expect.want.size(); ++i) {
    const Role r = expect.role_at(i);
    if (r == Role::value) {
      const double d = expect.want[i] - (expect.base.empty() ? 0.0 : expect.base[i]);
      values.push_back(i);
      ref2 += d * d;
    }
    if (r == Role::keep) keeps.push_back(i);
  }
  if (values.empty()) return;  // compare() reports this
  const double rms = std::sqrt(ref2 / double(values.size()));
  auto rejects = [&](size_t i, float v, const char* how) {
    Output bad = out;
    bad.got[i] = v;
    EXPECT_NE(compare(bad, expect, tolerance, "itself"), "")
        << "harness self-check: output '" << expect.name << "' accepted a copy with " << how
        << " at element " << i;
  };
  const size_t v = values[size_t(rng.integer(0, int64_t(values.size()) - 1))];
  rejects(v, float(out.got[v] + rms), "one value off by the rms");
  rejects(v, NAN, "one value NaN");
  if (!keeps.empty()) {
    const size_t k = keeps[size_t(rng.integer(0, int64_t(keeps.size()) - 1))];
    rejects(k, std::isnan(out.got[k]) ? 0.5f : out.got[k] + 1.0f,
            "one untouchable element written");
  }
}

// ---- host tensors ------------------------------------------------------------------

Tensor host_tensor(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  Tensor t = host_alloc(DType::f32, {int64_t(values.size())});
  if (!values.empty()) std::memcpy(t.data, values.data(), values.size() * sizeof(float));
  t.ndim = int(shape.size());
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i], n *= shape[i];
  if (n != int64_t(values.size()) || shape.size() > size_t(Tensor::kMaxDims))
    throw std::invalid_argument(
        fmt::format("host_tensor: {} values for shape {}", values.size(), join(shape, "x")));
  return t;
}

Tensor upload(Backend& b, const std::vector<float>& values, const std::vector<int64_t>& shape) {
  return b.upload(host_tensor(values, shape), b.compute_dtype());
}

Output fetch(Backend& b, const std::string& name, const Tensor& t) {
  b.synchronize();
  const Tensor h = b.to_host_f32(t);
  const float* p = h.ptr<float>();
  return Output{name, std::vector<float>(p, p + h.numel())};
}

std::string join(const std::vector<int64_t>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + std::to_string(v[i]);
  return s;
}

// ---- registration ----------------------------------------------------------------------

// The backends of this build and machine, and the bf16 emulator.
static std::vector<std::string> backends_to_test() {
  std::vector<std::string> names = available_backends();
  names.push_back("cpu-bf16");
  return names;
}

std::vector<OpParam> on_every_backend(const std::vector<CaseFactory>& cases) {
  std::vector<OpParam> params;
  for (const std::string& backend : backends_to_test())
    for (const CaseFactory& make : cases) params.push_back({backend, make()->name(), make});
  return params;
}

std::string test_name(const testing::TestParamInfo<OpParam>& info) {
  std::string s;
  for (char c : info.param.backend + "_" + info.param.case_name) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c));
    if (ok)
      s += c;
    else if (!s.empty() && s.back() != '_')
      s += '_';
  }
  while (s.back() == '_') s.pop_back();
  return s;
}

// ---- the test ----------------------------------------------------------------------------

static uint64_t fresh_seed() {
  if (const char* env = std::getenv("PHILORA_OP_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// One instance per backend name for the whole run.
static Backend& backend_named(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Backend>> backends;
  auto it = backends.find(name);
  if (it == backends.end()) {
    if (name == "cpu-bf16") {
      it = backends.emplace(name, make_bf16_emulator()).first;
    } else {
      auto made = make_backend(name);
      if (!made) throw std::runtime_error("make_backend(" + name + "): " + made.status().message());
      it = backends.emplace(name, std::move(made).value()).first;
    }
  }
  return *it->second;
}

static bool is_unsupported(const std::logic_error& e) {
  return std::string_view(e.what()).starts_with("unsupported");
}

TEST_P(OpTest, Run) {
  const OpParam& p = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(fmt::format("{} on {}, seed {} (rerun with PHILORA_OP_SEED={})", p.case_name,
                           p.backend, seed, seed));
  std::unique_ptr<OpCase> c = p.make();
  Rng rng(seed);
  c->init(rng);

  Backend& b = backend_named(p.backend);
  std::vector<Output> got;
  try {
    got = c->run(b);
  } catch (const std::logic_error& e) {
    if (is_unsupported(e))
      GTEST_SKIP() << p.backend << " does not support " << p.case_name << ": " << e.what();
    throw;
  }

  std::vector<Expect> want = c->reference();
  ASSERT_EQ(got.size(), want.size()) << "run() and reference() disagree on the outputs";
  double tolerance;
  std::string against;
  if (p.backend == "cpu") {
    tolerance = c->exact() ? 0.0 : 1e-5;
    against = "the float64 oracle";
  } else {
    // The cpu backend's outputs become the values to match; roles stay the oracle's.
    const std::vector<Output> cpu = c->run(backend_named("cpu"));
    for (size_t o = 0; o < want.size(); ++o)
      for (size_t i = 0; i < want[o].want.size(); ++i)
        if (want[o].role_at(i) == Role::value) want[o].want[i] = cpu[o].got[i];
    const bool half = b.compute_dtype() == DType::bf16 || b.compute_dtype() == DType::f16;
    tolerance = c->exact() ? 0.0 : half ? 2e-2 : 1e-5;
    against = "the cpu backend";
  }
  for (size_t o = 0; o < want.size(); ++o) {
    Errors errors;
    const std::string msg = compare(got[o], want[o], tolerance, against, &errors);
    if (!msg.empty()) ADD_FAILURE() << msg;
    if (std::getenv("PHILORA_OP_VERBOSE"))
      fmt::print("    {} vs {}: normalised error {:.2e}, worst row {:.2e}, tolerance {:.0e}\n",
                 want[o].name, against, errors.normalised, errors.worst_row, tolerance);
    if (msg.empty() && p.backend == "cpu")
      expect_rejects_corruption(got[o], want[o], tolerance, rng);
  }
  c->check_properties(got);
}

}  // namespace philora::optest
