// The op harness, in the spirit of ggml's test-backend-ops.
//
// A case (OpCase) declares its parameters (its name shows them all), draws
// fresh random host inputs from a seed, runs its op on any Backend and returns
// the outputs as host f32. The harness runs every case on every available
// backend:
//   cpu     vs the case's float64 oracle (plainest code, written in the test),
//   others  vs the cpu backend on the same inputs,
//   cpu-bf16 (tests/ops/bf16_emulator.h, the cpu backend behind bf16 storage)
//           vs the cpu backend, so this path runs on machines without a GPU,
// and compares by normalised error ‖out − ref‖ / ‖ref‖ ≤ tolerance, and per
// row: ‖out_r − ref_r‖ / (typical ‖ref_r‖) ≤ kRowSlack · tolerance, so that one
// wrong or missing row (error ~1) shows even among 733.
//
// Inputs are f32 values rounded through bf16, so a bf16 backend sees exactly
// the values the cpu backend and the oracle see. Outputs that an op writes in
// place (the KV pages, the LoRA y) are poisoned with NaN before each run where
// the op must not write, and the harness checks every element the op must leave
// alone is left bit for bit.
//
// Unsupported ops: a backend that lacks an op, or a shape of it, throws
//   std::logic_error("unsupported: <op>: <why>")
// and the case is reported as skipped on that backend, not failed.
//
// Rerun with the same inputs: PHILORA_OP_SEED=<seed shown in the failure>.
// Print every error and its tolerance: PHILORA_OP_VERBOSE=1.
// Adding an op means adding a case: see any *_ops_test.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace philora::optest {

// ---- what an output must hold ----------------------------------------------

enum class Role : uint8_t {
  value,  // computed by the op: compared by normalised error, must be finite
  keep,   // the op must leave it exactly as it was (a NaN poison or an initial value)
  free,   // unspecified by the op's contract: ignored
};

// One output as the oracle says it must be, seen as a (rows, cols) matrix.
struct Expect {
  std::string name;
  int64_t cols = 0;
  std::vector<double> want;     // [rows * cols] value: the result; keep: what must remain
  std::vector<Role> role = {};  // [rows * cols] or empty = every element is a value
  // [rows * cols] or empty. For ops that add in place: what the output held
  // before; the error is then normalised by ‖want − base‖, the op's own part.
  std::vector<double> base = {};

  int64_t rows() const { return cols == 0 ? 0 : int64_t(want.size()) / cols; }
  Role role_at(size_t i) const { return role.empty() ? Role::value : role[i]; }
};

// One output of a run, as host f32, in the order of the case's Expects.
struct Output {
  std::string name;
  std::vector<float> got;
};

// A single row may be this many times worse than the whole output: rounding
// noise varies from row to row, a wrong row is off by ~1.
inline constexpr double kRowSlack = 4.0;

// The two errors over the value elements: ‖out − ref‖ / ‖ref‖, and the
// largest ‖out_r − ref_r‖ over rows r divided by the typical ‖ref_r‖.
struct Errors {
  double normalised = 0;
  double worst_row = 0;
};

// Compares one output; returns "" when it passes, else a message naming the
// output, the errors, and the first offending elements as [row, col].
std::string compare(const Output& out, const Expect& expect, double tolerance,
                    const std::string& against, Errors* errors = nullptr);

// ---- random inputs -----------------------------------------------------------

inline float round_bf16(double v) { return bf16_to_f32(f32_to_bf16(float(v))); }

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  uint64_t bits() { return gen_(); }
  // Uniform in [lo, hi), double precision.
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * double(gen_() >> 11) * (1.0 / double(uint64_t(1) << 53));
  }
  // Uniform integer in [lo, hi].
  int64_t integer(int64_t lo, int64_t hi) { return lo + int64_t(gen_() % uint64_t(hi - lo + 1)); }
  // n values uniform in [lo, hi), each rounded through bf16.
  std::vector<float> bf16(int64_t n, double lo, double hi) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = round_bf16(uniform(lo, hi));
    return v;
  }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i)
      std::swap(v[i - 1], v[size_t(integer(0, int64_t(i) - 1))]);
  }

 private:
  std::mt19937_64 gen_;
};

// ---- host tensors and fetching outputs ---------------------------------------

// A host f32 tensor owning a copy of `values`; shape up to 4 dims.
Tensor host_tensor(const std::vector<float>& values, const std::vector<int64_t>& shape);
// Uploads host values to b in its compute dtype (activations, weights, KV pages).
Tensor upload(Backend& b, const std::vector<float>& values, const std::vector<int64_t>& shape);
// Waits for b, copies t to the host as f32.
Output fetch(Backend& b, const std::string& name, const Tensor& t);

// ---- cases -------------------------------------------------------------------

class OpCase {
 public:
  virtual ~OpCase() = default;
  // The op and every parameter, e.g. "rms_norm(T=7 n=1002 eps=1e-06)".
  virtual std::string name() const = 0;
  // Draws fresh host inputs; called once, before run() and reference().
  virtual void init(Rng& rng) = 0;
  // Runs the op on b from the host inputs; may be called for several backends.
  virtual std::vector<Output> run(Backend& b) const = 0;
  // The float64 oracle, one Expect per output of run(), in the same order.
  virtual std::vector<Expect> reference() const = 0;
  // Ops that only move input values (embedding, gather_rows) must match exactly.
  virtual bool exact() const { return false; }
  // Checks beyond the comparison (statistics of random_uniform); use EXPECT_*.
  virtual void check_properties(const std::vector<Output>& out) const {}
};

using CaseFactory = std::function<std::unique_ptr<OpCase>()>;

template <typename C, typename... Args>
CaseFactory make_case(Args... args) {
  return [=] { return std::unique_ptr<OpCase>(std::make_unique<C>(args...)); };
}

// One test: a case on a backend.
struct OpParam {
  std::string backend;
  std::string case_name;
  CaseFactory make;
};
inline void PrintTo(const OpParam& p, std::ostream* os) {
  *os << p.case_name << " on " << p.backend;
}

// Every case on every backend in available_backends(), and on cpu-bf16.
std::vector<OpParam> on_every_backend(const std::vector<CaseFactory>& cases);
// gtest name of a param: "<backend>_<case name as identifier>".
std::string test_name(const testing::TestParamInfo<OpParam>& info);

class OpTest : public testing::TestWithParam<OpParam> {};

// Registers a family of cases:  PHILORA_OP_CASES(Norm, norm_cases());
#define PHILORA_OP_CASES(family, cases)                                                   \
  INSTANTIATE_TEST_SUITE_P(family, OpTest,                                                \
                           testing::ValuesIn(::philora::optest::on_every_backend(cases)), \
                           ::philora::optest::test_name)

// ---- small helpers for case names ------------------------------------------------

std::string join(const std::vector<int64_t>& v, const char* sep = ",");

}  // namespace philora::optest
