// A small metrics registry (counters, gauges, histograms with labels) and its rendering in
// the Prometheus text format. Thread-safe: HTTP handlers and the coordinator thread both feed it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace llava {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;  // name, value

class MetricsRegistry {
 public:
  // Declares a family; every name is declared once, before it is fed.
  void counter(const std::string& name, const std::string& help);
  void gauge(const std::string& name, const std::string& help);
  void histogram(const std::string& name, const std::string& help, std::vector<double> buckets);

  void add(const std::string& name, const MetricLabels& labels = {}, double amount = 1);
  void set(const std::string& name, const MetricLabels& labels, double value);
  void observe(const std::string& name, const MetricLabels& labels, double value);
  // Drops a gauge's series (a worker that no longer exists).
  void clear(const std::string& name);

  // The text format, version 0.0.4: HELP, TYPE, then the series; histograms as cumulative
  // _bucket{le=...} lines, _sum and _count.
  std::string render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    double value = 0;
    std::vector<double> bucket_counts;  // histogram: per bucket, not cumulative
    double sum = 0, count = 0;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> buckets;  // upper bounds, ascending; +Inf implied
    std::map<MetricLabels, Series> series;
  };
  Family& family(const std::string& name, Type type);
  void declare(const std::string& name, Type type, const std::string& help,
               std::vector<double> buckets);

  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
};

// Bucket bounds for latencies in seconds, 1 ms to 5 min.
std::vector<double> latency_buckets();

// ---- llava-pipe's metrics (prefix llava_), fed from the coordinator's events and the HTTP
// layer. The on_* calls and refresh() run on the coordinator's thread; on_http_response on
// any thread.

struct RequestResult;
struct LeaseEvent;
class Coordinator;

class PipelineMetrics {
 public:
  explicit PipelineMetrics(int64_t image_tokens_per_image);
  MetricsRegistry& registry() { return registry_; }

  void on_submitted(uint64_t request, int images);
  void on_text(uint64_t request);
  void on_result(const RequestResult& result);
  // A grant's wait (sequential mode's turns) goes to llava_lease_wait_seconds.
  void on_lease_event(const LeaseEvent& event);
  // Request-independent figures read from the coordinator: workers up, restarts, memory.
  void refresh(const Coordinator& coordinator);
  // An HTTP answer: `endpoint` as routed ("/v1/chat/completions"), its status.
  void on_http_response(const std::string& endpoint, int status);

 private:
  using Clock = std::chrono::steady_clock;
  struct Open {
    int images = 0;
    bool generating = false;  // has streamed text
    Clock::time_point last_text;
  };
  MetricsRegistry registry_;
  int64_t image_tokens_;
  std::map<uint64_t, Open> open_;
  std::map<std::string, int> restarts_seen_;  // process -> restarts already counted
};

}  // namespace llava
