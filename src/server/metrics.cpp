#include "server/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace philora::server {

namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", int64_t(v));
  return fmt::format("{}", v);
}

}  // namespace

std::string label_text(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i)
    out += fmt::format("{}{}=\"{}\"", i ? "," : "", labels[i].first, escape_label(labels[i].second));
  return out + "}";
}

void metric_header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, const std::string& name, const Labels& labels, double value) {
  out += fmt::format("{}{} {}\n", name, label_text(labels), number(value));
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t b = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[b];
  sum_ += value;
  ++count_;
}

int64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

void Histogram::render(std::string& out, const std::string& name, const Labels& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    Labels l = labels;
    l.emplace_back("le", i < bounds_.size() ? number(bounds_[i]) : "+Inf");
    sample(out, name + "_bucket", l, double(cumulative));
  }
  sample(out, name + "_sum", labels, sum_);
  sample(out, name + "_count", labels, double(count_));
}

CounterFamily::CounterFamily(std::vector<std::string> label_names)
    : label_names_(std::move(label_names)) {}

void CounterFamily::add(const std::vector<std::string>& label_values, int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  values_[label_values] += n;
}

int64_t CounterFamily::value(const std::vector<std::string>& label_values) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = values_.find(label_values);
  return it == values_.end() ? 0 : it->second;
}

void CounterFamily::render(std::string& out, const std::string& name, const Labels& fixed) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, n] : values_) {
    Labels l = fixed;
    for (size_t i = 0; i < label_names_.size() && i < values.size(); ++i)
      l.emplace_back(label_names_[i], values[i]);
    sample(out, name, l, double(n));
  }
}

const std::vector<double>& ttft_buckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                        20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
  return b;
}

const std::vector<double>& inter_token_buckets() {
  static const std::vector<double> b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                                        0.1,   0.15,   0.2,   0.3,  0.4,   0.5,  0.75,
                                        1.0,   2.5,    5.0,   7.5,  10.0,  20.0, 40.0, 80.0};
  return b;
}

const std::vector<double>& request_time_buckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05, 0.1,  0.3,   0.5,   0.8,   1.0,
                                        1.5,  2.0,   2.5,  5.0,  10.0,  15.0,  20.0,  30.0,
                                        40.0, 50.0,  60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
                                        7680.0};
  return b;
}

}  // namespace philora::server
