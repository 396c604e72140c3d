// Prometheus metrics: histograms and labelled counters, and the text
// exposition format (version 0.0.4) that /metrics serves. Where vLLM has the
// same metric, its exact name (`vllm:time_to_first_token_seconds`), so that
// vLLM dashboards work; philora's own are `philora_*`. docs/metrics.md lists them all. Thread-safe: observed on the engine thread
// and HTTP threads, rendered on an HTTP thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace philora::server {

// name="value" pairs, in order: {{"route", "/generate"}, {"status", "200"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

// `{a="x",b="y"}` with values escaped as the format wants; "" for no labels.
std::string label_text(const Labels& labels);

// A cumulative histogram over fixed upper bounds (seconds), as Prometheus'.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Appends the _bucket / _sum / _count samples of `name` with `labels`.
  void render(std::string& out, const std::string& name, const Labels& labels) const;
  int64_t count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;   // [buckets] upper bounds, increasing (+Inf implied)
  std::vector<int64_t> counts_;  // [buckets + 1] observations per bucket (not cumulative)
  double sum_ = 0;
  int64_t count_ = 0;
};

// A counter family: one value per combination of label values.
class CounterFamily {
 public:
  explicit CounterFamily(std::vector<std::string> label_names);
  void add(const std::vector<std::string>& label_values, int64_t n = 1);
  int64_t value(const std::vector<std::string>& label_values) const;
  // Appends one sample per label combination seen; `fixed` labels go first.
  void render(std::string& out, const std::string& name, const Labels& fixed = {}) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::string> label_names_;
  std::map<std::vector<std::string>, int64_t> values_;
};

// The `# HELP` and `# TYPE` lines of a metric.
void metric_header(std::string& out, const std::string& name, const char* type, const char* help);
// One sample line: name{labels} value.
void sample(std::string& out, const std::string& name, const Labels& labels, double value);

// vLLM's buckets (v1 loggers.py), with finer ones at the low end where a
// small model on a CPU lands.
const std::vector<double>& ttft_buckets();
const std::vector<double>& inter_token_buckets();
const std::vector<double>& request_time_buckets();

}  // namespace philora::server
