#include "ops/sample_oracle.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>

#include "ops/bf16_emulator.h"

namespace philora::optest {

int64_t SampleBatch::width() const {
  int64_t k = -1;
  for (const SampleRowIn& r : rows) k = std::max<int64_t>(k, r.logprobs);
  return k;
}

std::string SampleBatch::describe(int64_t r) const {
  const SampleRowIn& s = rows[size_t(r)];
  return fmt::format(
      "row {} (vocab {}, T={} top_k={} top_p={} min_p={} typical_p={} uniform={} rep={} freq={} "
      "pres={} count_row={} bias entries={} logprobs={} kind={} target={})",
      r, vocab, s.temperature, s.top_k, s.top_p, s.min_p, s.typical_p, s.uniform, s.repetition,
      s.frequency, s.presence, s.count_row, s.bias.size(), s.logprobs, s.logprob_kind, s.target);
}

SampleOut run_sample(Backend& b, const SampleBatch& in) {
  const int64_t R = in.size(), V = in.vocab;
  std::vector<float> logits, temperature, top_p, min_p, typical_p, uniform, rep, freq, pres,
      bias_value;
  std::vector<int32_t> top_k, count_row, logprobs, kind, target, bias_indptr{0}, bias_token;
  for (const SampleRowIn& s : in.rows) {
    logits.insert(logits.end(), s.logits.begin(), s.logits.end());
    temperature.push_back(s.temperature);
    top_k.push_back(s.top_k);
    top_p.push_back(s.top_p);
    min_p.push_back(s.min_p);
    typical_p.push_back(s.typical_p);
    uniform.push_back(s.uniform);
    rep.push_back(s.repetition);
    freq.push_back(s.frequency);
    pres.push_back(s.presence);
    count_row.push_back(s.count_row);
    logprobs.push_back(s.logprobs);
    kind.push_back(s.logprob_kind);
    target.push_back(s.target);
    for (const auto& [t, v] : s.bias) {
      bias_token.push_back(t);
      bias_value.push_back(v);
    }
    bias_indptr.push_back(int32_t(bias_token.size()));
  }
  SamplingPlan p;
  p.temperature = b.upload_f32(temperature);
  p.top_k = b.upload_i32(top_k);
  p.top_p = b.upload_f32(top_p);
  p.min_p = b.upload_f32(min_p);
  p.typical_p = b.upload_f32(typical_p);
  p.uniform = b.upload_f32(uniform);
  p.repetition_penalty = b.upload_f32(rep);
  p.frequency_penalty = b.upload_f32(freq);
  p.presence_penalty = b.upload_f32(pres);
  p.count_row = b.upload_i32(count_row);
  p.bias_indptr = b.upload_i32(bias_indptr);
  p.bias_token = b.upload_i32(bias_token);
  p.bias_value = b.upload_f32(bias_value);
  p.logprobs = b.upload_i32(logprobs);
  p.logprob_kind = b.upload_i32(kind);
  p.target = b.upload_i32(target);
  if (in.count_rows > 0) p.counts = b.upload_i32(in.counts).reshape({in.count_rows, V});
  // Masks: row r's is mask row mask_row[r] (rows without one: -1), only when some row has one.
  std::vector<int32_t> mask_row, mask;
  for (const SampleRowIn& s : in.rows) {
    mask_row.push_back(s.mask.empty() ? -1 : int32_t(mask.size() / size_t((V + 31) / 32)));
    mask.insert(mask.end(), s.mask.begin(), s.mask.end());
  }
  if (!mask.empty()) {
    p.mask_row = b.upload_i32(mask_row);
    p.mask = b.upload_i32(mask).reshape({int64_t(mask.size()) / ((V + 31) / 32), (V + 31) / 32});
  }
  p.logprobs_width = in.width();
  const SampleResult res = b.sample(upload(b, logits, {R, V}), p);
  SampleOut out;
  out.tokens = b.download_i32(res.tokens);
  out.width = p.logprobs_width;
  if (out.width >= 0) {
    const Tensor lp = b.to_host_f32(res.logprob);
    out.logprob.assign(lp.ptr<float>(), lp.ptr<float>() + R);
    out.top_tokens = b.download_i32(res.top_tokens);
    const Tensor top = b.to_host_f32(res.top_logprobs);
    out.top_logprobs.assign(top.ptr<float>(), top.ptr<float>() + R * out.width);
  }
  if (in.count_rows > 0) out.counts = b.download_i32(p.counts);
  return out;
}

// ---- the float64 oracle ------------------------------------------------------------

namespace {

// What decides a token's processed logit: tokens of equal signature get equal
// processed logits in any precision; others may round apart.
struct Signature {
  double raw;
  bool has_bias;
  double bias;
  int32_t count;
  bool operator==(const Signature& o) const {
    return raw == o.raw && has_bias == o.has_bias && (!has_bias || bias == o.bias) &&
           count == o.count;
  }
};

// Whether two processed logits may round into another order (or apart, or
// together) although they come from different arithmetic.
bool near_tie(double a, double b, const Signature& sa, const Signature& sb) {
  if (sa == sb) return false;
  return std::fabs(a - b) <= 1e-5 * std::max(1.0, std::fabs(a));
}

std::vector<double> log_softmax(const std::vector<double>& x) {
  const int64_t best = std::max_element(x.begin(), x.end()) - x.begin();  // the first max
  std::vector<double> lp(x.size(), -kInf);
  if (!std::isfinite(x[size_t(best)])) {
    lp[size_t(best)] = 0;
    return lp;
  }
  double sum = 0;
  for (const double v : x) sum += std::exp(v - x[size_t(best)]);
  for (size_t i = 0; i < x.size(); ++i) lp[i] = x[i] - x[size_t(best)] - std::log(sum);
  return lp;
}

}  // namespace

OracleRow oracle(const SampleBatch& in, int64_t r) {
  const SampleRowIn& s = in.rows[size_t(r)];
  const int64_t V = in.vocab;
  OracleRow o;
  // 1. the logits, NaN as -inf.
  std::vector<double> x(static_cast<size_t>(V));
  for (int64_t t = 0; t < V; ++t)
    x[size_t(t)] = std::isnan(s.logits[size_t(t)]) ? -kInf : s.logits[size_t(t)];
  std::vector<Signature> sig(static_cast<size_t>(V));
  for (int64_t t = 0; t < V; ++t) sig[size_t(t)] = {x[size_t(t)], false, 0.0, -1};
  const std::vector<double> raw =
      s.logprobs >= 0 && s.logprob_kind == 0 ? log_softmax(x) : std::vector<double>();
  // 2. the mask (a token it clears is -inf), bias and bans.
  if (!s.mask.empty())
    for (int64_t t = 0; t < V; ++t)
      if (!(s.mask[size_t(t / 32)] >> (t % 32) & 1u)) {
        x[size_t(t)] = -kInf;
        sig[size_t(t)] = {-kInf, false, 0.0, -1};
      }
  for (const auto& [t, v] : s.bias) {
    x[size_t(t)] += v;
    sig[size_t(t)].has_bias = true;
    sig[size_t(t)].bias = v;
  }
  // 3. penalties from the counts.
  if (s.count_row >= 0)
    for (int64_t t = 0; t < V; ++t) {
      const int32_t e = in.counts[size_t(s.count_row * V + t)];
      const int64_t n = e / 2;
      const bool in_prompt = e % 2 == 1;
      sig[size_t(t)].count = e;
      double& v = x[size_t(t)];
      if (in_prompt || n > 0) v = v > 0 ? v / s.repetition : v * s.repetition;
      if (n > 0) v -= double(s.frequency) * double(n) + double(s.presence);
    }
  o.processed = x;
  const int64_t best = std::max_element(x.begin(), x.end()) - x.begin();

  // 4. greedy.
  if (!(s.temperature > 0) || !std::isfinite(x[size_t(best)])) {
    o.greedy = true;
    o.token = int32_t(best);
    for (int64_t t = 0; t < V; ++t)
      if (t != best &&
          (near_tie(x[size_t(best)], x[size_t(t)], sig[size_t(best)], sig[size_t(t)]) ||
           (x[size_t(t)] == x[size_t(best)] && std::isfinite(x[size_t(best)]) &&
            !(sig[size_t(t)] == sig[size_t(best)]))))
        o.margin = 0;
    if (s.logprobs >= 0) o.logprob = s.logprob_kind == 0 ? raw : log_softmax(x);
    return o;
  }

  // 4. sampled: weights, candidates in (x desc, index asc) order.
  const double T = s.temperature;
  std::vector<double> lw(static_cast<size_t>(V)), w(static_cast<size_t>(V));
  for (int64_t t = 0; t < V; ++t) {
    lw[size_t(t)] = (x[size_t(t)] - x[size_t(best)]) / T;
    w[size_t(t)] = std::exp(lw[size_t(t)]);
  }
  std::vector<int64_t> order;
  for (int64_t t = 0; t < V; ++t)
    if (std::isfinite(x[size_t(t)])) order.push_back(t);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return x[size_t(a)] > x[size_t(b)]; });
  // A cut between positions j - 1 and j of the order must not fall on a near tie.
  auto boundary_clear = [&](size_t j) {
    if (j == 0 || j >= order.size()) return true;
    const int64_t a = order[j - 1], b = order[j];
    const bool exact_mixed = x[size_t(a)] == x[size_t(b)] && !(sig[size_t(a)] == sig[size_t(b)]);
    return !exact_mixed && !near_tie(x[size_t(a)], x[size_t(b)], sig[size_t(a)], sig[size_t(b)]);
  };
  size_t keep = order.size();
  if (s.min_p > 0) {
    for (size_t j = 0; j < order.size(); ++j) {
      const double d = std::fabs(w[size_t(order[j])] - double(s.min_p)) / double(s.min_p);
      o.margin = std::min(o.margin, d);
      if (w[size_t(order[j])] < double(s.min_p) && keep == order.size()) keep = j;
    }
  }
  if (s.top_k > 0 && size_t(s.top_k) < keep) {
    keep = size_t(s.top_k);
    if (!boundary_clear(keep)) o.margin = 0;
  }
  if (s.top_p < 1) {
    double sum = 0;
    for (size_t j = 0; j < keep; ++j) sum += w[size_t(order[j])];
    double mass = 0;
    for (size_t j = 0; j < keep; ++j) {
      const double before = mass;
      mass += w[size_t(order[j])];
      if (mass >= double(s.top_p) * sum) {
        o.margin = std::min(o.margin, (mass - double(s.top_p) * sum) / sum);
        if (j > 0) o.margin = std::min(o.margin, (double(s.top_p) * sum - before) / sum);
        if (!boundary_clear(j + 1)) o.margin = 0;
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<char> kept(static_cast<size_t>(V), 0);
  for (size_t j = 0; j < keep; ++j) kept[size_t(order[j])] = 1;
  if (s.typical_p < 1) {
    // HF: p = softmax over the kept set, H = -Σ p log p, s_t = |log p_t + H|.
    double z = 0;
    for (int64_t t = 0; t < V; ++t)
      if (kept[size_t(t)]) z += w[size_t(t)];
    double h = 0;
    for (int64_t t = 0; t < V; ++t)
      if (kept[size_t(t)]) {
        const double p = w[size_t(t)] / z;
        h -= p * std::log(p);
      }
    std::vector<double> score(static_cast<size_t>(V), kInf);
    std::vector<int64_t> by_score;
    for (int64_t t = 0; t < V; ++t)
      if (kept[size_t(t)]) {
        score[size_t(t)] = std::fabs(std::log(w[size_t(t)] / z) + h);
        by_score.push_back(t);
      }
    std::stable_sort(by_score.begin(), by_score.end(),
                     [&](int64_t a, int64_t b) { return score[size_t(a)] < score[size_t(b)]; });
    const double target = double(s.typical_p) * z;
    double mass = 0;
    for (size_t j = 0; j < by_score.size(); ++j) {
      const double before = mass;
      mass += w[size_t(by_score[j])];
      const bool group_ends =
          j + 1 == by_score.size() || score[size_t(by_score[j + 1])] != score[size_t(by_score[j])];
      if (!group_ends || mass < target) continue;
      const double s_star = score[size_t(by_score[j])];
      // The mass reached clearly, by the group and not before it; no token of
      // other arithmetic within rounding of the threshold score.
      size_t group_start = j;
      while (group_start > 0 && score[size_t(by_score[group_start - 1])] == s_star) --group_start;
      double group_before = 0;
      for (size_t i = 0; i < group_start; ++i) group_before += w[size_t(by_score[i])];
      (void)before;
      o.margin = std::min({o.margin, (mass - target) / z, (target - group_before) / z});
      for (const int64_t t : by_score) {
        const bool same_group = score[size_t(t)] == s_star;
        if (same_group && !(sig[size_t(t)] == sig[size_t(by_score[j])])) o.margin = 0;
        if (!same_group && std::fabs(score[size_t(t)] - s_star) < 1e-4) o.margin = 0;
      }
      for (const int64_t t : by_score)
        if (score[size_t(t)] > s_star) kept[size_t(t)] = 0;
      break;
    }
  }
  // The walk in vocabulary order.
  double total = 0;
  for (int64_t t = 0; t < V; ++t)
    if (kept[size_t(t)]) total += w[size_t(t)];
  double cdf = 0;
  const double u = s.uniform;
  std::vector<int64_t> kept_tokens;
  for (int64_t t = 0; t < V; ++t)
    if (kept[size_t(t)]) kept_tokens.push_back(t);
  o.token = int32_t(kept_tokens.back());
  if (kept_tokens.size() > 1)
    for (const int64_t t : kept_tokens) {
      const double before = cdf;
      cdf += w[size_t(t)] / total;
      if (cdf > u) {
        o.token = int32_t(t);
        const double below = before == 0 && u == 0 ? kInf : u - before;
        o.margin = std::min({o.margin, cdf - u, below});
        break;
      }
    }
  if (s.logprobs >= 0) {
    if (s.logprob_kind == 0) {
      o.logprob = raw;
    } else {
      o.logprob.assign(size_t(V), -kInf);
      for (int64_t t = 0; t < V; ++t)
        if (kept[size_t(t)]) o.logprob[size_t(t)] = lw[size_t(t)] - std::log(total);
    }
  }
  return o;
}

// ---- checks -----------------------------------------------------------------------

namespace {

bool close(double got, double want) {
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(got - want) <= kLogprobTolerance * std::max(1.0, std::fabs(want));
}

}  // namespace

void expect_matches_oracle(const SampleBatch& in, const SampleOut& got,
                           const std::string& backend) {
  ASSERT_EQ(got.tokens.size(), size_t(in.size()));
  const int64_t V = in.vocab;
  std::vector<int32_t> counts = in.counts;  // the table the op must leave
  int wrong = 0;
  for (int64_t r = 0; r < in.size(); ++r) {
    const SampleRowIn& s = in.rows[size_t(r)];
    const OracleRow o = oracle(in, r);
    const int32_t token = got.tokens[size_t(r)];
    if (token != o.token) {
      if (wrong++ < 8)
        ADD_FAILURE() << backend << ": " << in.describe(r) << ": token " << token
                      << (token >= 0 && token < V
                              ? fmt::format(" (processed logit {})", o.processed[size_t(token)])
                              : std::string())
                      << ", the oracle says " << o.token << " (processed logit "
                      << o.processed[size_t(o.token)] << ", margin " << o.margin << ")";
      continue;
    }
    if (s.count_row >= 0) counts[size_t(s.count_row * V + token)] += 2;
    if (s.logprobs < 0) continue;
    ASSERT_EQ(got.width, in.width());
    const int32_t target = s.target >= 0 ? s.target : token;
    EXPECT_TRUE(close(got.logprob[size_t(r)], o.logprob[size_t(target)]))
        << backend << ": " << in.describe(r) << ": logprob of " << target << " is "
        << got.logprob[size_t(r)] << ", the oracle says " << o.logprob[size_t(target)];
    // The oracle's top k: logprob desc, ties in ascending index.
    std::vector<int64_t> want(static_cast<size_t>(V));
    std::iota(want.begin(), want.end(), 0);
    std::stable_sort(want.begin(), want.end(), [&](int64_t a, int64_t b) {
      return o.logprob[size_t(a)] > o.logprob[size_t(b)];
    });
    const auto k = size_t(s.logprobs);
    std::vector<int32_t> seen;
    for (size_t j = 0; j < k; ++j) {
      const int32_t t = got.top_tokens[size_t(r * got.width) + j];
      const float lp = got.top_logprobs[size_t(r * got.width) + j];
      ASSERT_TRUE(t >= 0 && t < V)
          << backend << ": " << in.describe(r) << ": top " << j << " is " << t;
      EXPECT_TRUE(close(lp, o.logprob[size_t(want[j])]))
          << backend << ": " << in.describe(r) << ": top " << j << " has logprob " << lp
          << ", the oracle's " << j << "th is " << o.logprob[size_t(want[j])];
      EXPECT_TRUE(close(lp, o.logprob[size_t(t)]))
          << backend << ": " << in.describe(r) << ": top " << j << " is token " << t
          << " with logprob " << lp << ", the oracle gives it " << o.logprob[size_t(t)];
      EXPECT_EQ(std::count(seen.begin(), seen.end(), t), 0) << "token " << t << " listed twice";
      seen.push_back(t);
      // Where the value stands clear of every other token's (or ties exactly
      // in equal arithmetic), the token itself is exact. Every token within
      // the tolerance counts, not only the oracle's neighbours: a value 6e-8
      // above a run of exact ties is one of them in f32 arithmetic.
      // (Equal logprobs keep ascending ids when they are -inf or come from
      // equal arithmetic: equal logits, equally processed.)
      const double v = o.logprob[size_t(want[j])];
      auto apart = [&](size_t i) {
        const double u = o.logprob[size_t(want[i])];
        if (u == v)
          return v == -kInf || (o.processed[size_t(want[i])] == o.processed[size_t(want[j])] &&
                                s.logits[size_t(want[i])] == s.logits[size_t(want[j])]);
        return std::fabs(u - v) > 10 * kLogprobTolerance * std::max(1.0, std::fabs(v));
      };
      // The oracle's order is by value: the tokens near v are a run around j.
      bool clear = true;
      for (size_t i = j; clear && i-- > 0;) {
        if (apart(i) && o.logprob[size_t(want[i])] != v) break;  // past the run
        clear = apart(i);
      }
      for (size_t i = j + 1; clear && i < want.size(); ++i) {
        if (apart(i) && o.logprob[size_t(want[i])] != v) break;
        clear = apart(i);
      }
      if (clear) {
        EXPECT_EQ(t, want[j]) << backend << ": " << in.describe(r) << ": top " << j;
      }
    }
  }
  EXPECT_EQ(wrong, 0) << backend << ": " << wrong << " of " << in.size()
                      << " rows differ from the oracle";
  if (in.count_rows > 0 && wrong == 0) {
    ASSERT_EQ(got.counts.size(), counts.size());
    for (size_t i = 0; i < counts.size(); ++i)
      ASSERT_EQ(got.counts[i], counts[i])
          << backend << ": counts[" << i / size_t(V) << ", " << i % size_t(V)
          << "]: the op adds 2 for each chosen token and changes nothing else";
  }
}

// ---- backends ----------------------------------------------------------------------

std::vector<std::string> sample_backends() {
  std::vector<std::string> names = available_backends();
  names.push_back("cpu-bf16");
  return names;
}

Backend& backend_named(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Backend>> made;
  std::unique_ptr<Backend>& b = made[name];
  if (!b) {
    if (name == "cpu-bf16") {
      b = make_bf16_emulator();
    } else {
      auto m = make_backend(name);
      if (!m) throw std::runtime_error("make_backend(" + name + "): " + m.status().message());
      b = std::move(m).value();
    }
  }
  return *b;
}

uint64_t fresh_seed() {
  if (const char* env = std::getenv("PHILORA_OP_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

}  // namespace philora::optest
