// The metrics registry and its Prometheus text rendering.
#include "launch/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "coordinator/coordinator.h"

namespace llava {
namespace {

std::string number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char text[64];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(text, sizeof text, "%.0f", value);
  } else {  // the shortest of %.15g / %.17g that reads back as the same double
    std::snprintf(text, sizeof text, "%.15g", value);
    if (std::strtod(text, nullptr) != value) std::snprintf(text, sizeof text, "%.17g", value);
  }
  return text;
}

// Label values escape backslash, double quote and newline; HELP text backslash and newline.
std::string escaped(const std::string& text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string label_text(const MetricLabels& labels, const std::string& le = "") {
  if (labels.empty() && le.empty()) return "";
  std::string out = "{";
  for (const auto& [name, value] : labels) {
    if (out.size() > 1) out += ",";
    out += name + "=\"" + escaped(value, true) + "\"";
  }
  if (!le.empty()) out += std::string(out.size() > 1 ? "," : "") + "le=\"" + le + "\"";
  return out + "}";
}

}  // namespace

std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

void MetricsRegistry::declare(const std::string& name, Type type, const std::string& help,
                              std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (families_.count(name)) throw std::logic_error("metric " + name + " declared twice");
  if (!std::is_sorted(buckets.begin(), buckets.end())) {
    throw std::logic_error("metric " + name + ": buckets must ascend");
  }
  families_[name] = Family{type, help, std::move(buckets), {}};
}

void MetricsRegistry::counter(const std::string& name, const std::string& help) {
  declare(name, Type::kCounter, help, {});
}
void MetricsRegistry::gauge(const std::string& name, const std::string& help) {
  declare(name, Type::kGauge, help, {});
}
void MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                std::vector<double> buckets) {
  declare(name, Type::kHistogram, help, std::move(buckets));
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, Type type) {
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type != type) {
    throw std::logic_error("metric " + name + " is not declared as that kind");
  }
  return it->second;
}

void MetricsRegistry::add(const std::string& name, const MetricLabels& labels, double amount) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type == Type::kHistogram) {
    throw std::logic_error("metric " + name + " is not a declared counter or gauge");
  }
  if (it->second.type == Type::kCounter && amount < 0) {
    throw std::logic_error("counter " + name + " cannot go down");
  }
  it->second.series[labels].value += amount;
}

void MetricsRegistry::set(const std::string& name, const MetricLabels& labels, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  family(name, Type::kGauge).series[labels].value = value;
}

void MetricsRegistry::observe(const std::string& name, const MetricLabels& labels, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  Family& f = family(name, Type::kHistogram);
  Series& s = f.series[labels];
  if (s.bucket_counts.empty()) s.bucket_counts.assign(f.buckets.size() + 1, 0);
  const size_t at = std::lower_bound(f.buckets.begin(), f.buckets.end(), value) - f.buckets.begin();
  s.bucket_counts[at] += 1;  // le is inclusive: value == bound counts in that bucket
  s.sum += value;
  s.count += 1;
}

void MetricsRegistry::clear(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  family(name, Type::kGauge).series.clear();
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    const char* type = f.type == Type::kCounter ? "counter"
                       : f.type == Type::kGauge ? "gauge"
                                                : "histogram";
    out += "# HELP " + name + " " + escaped(f.help, false) + "\n";
    out += "# TYPE " + name + " " + type + "\n";
    for (const auto& [labels, s] : f.series) {
      if (f.type != Type::kHistogram) {
        out += name + label_text(labels) + " " + number(s.value) + "\n";
        continue;
      }
      double cumulative = 0;
      for (size_t i = 0; i < f.buckets.size(); ++i) {
        cumulative += s.bucket_counts[i];
        out += name + "_bucket" + label_text(labels, number(f.buckets[i])) + " " +
               number(cumulative) + "\n";
      }
      out += name + "_bucket" + label_text(labels, "+Inf") + " " + number(s.count) + "\n";
      out += name + "_sum" + label_text(labels) + " " + number(s.sum) + "\n";
      out += name + "_count" + label_text(labels) + " " + number(s.count) + "\n";
    }
  }
  return out;
}

}  // namespace llava

// ---- llava-pipe's metrics ------------------------------------------------------------

namespace llava {
namespace {

// "vision-0" -> stage "vision", replica "0".
MetricLabels worker_labels(const std::string& process) {
  const size_t dash = process.rfind('-');
  if (dash == std::string::npos) return {{"stage", process}, {"replica", "0"}};
  return {{"stage", process.substr(0, dash)}, {"replica", process.substr(dash + 1)}};
}

}  // namespace

PipelineMetrics::PipelineMetrics(int64_t image_tokens_per_image)
    : image_tokens_(image_tokens_per_image) {
  auto& r = registry_;
  r.gauge("llava_requests_running", "Requests generating text (their first token has streamed).");
  r.gauge("llava_requests_waiting",
          "Requests submitted and not generating yet: queued, in the vision stage, or in prefill.");
  r.counter("llava_request_success_total", "Requests answered, by finish reason (stop, length).");
  r.counter("llava_request_errors_total", "HTTP requests answered with an error, by status code.");
  r.counter("llava_requests_cancelled_total", "Requests cancelled (client gone, timeout, drain).");
  r.counter("llava_request_failures_total", "Requests the pipeline could not answer.");
  r.histogram("llava_time_to_first_token_seconds", "From submission to the first generated token.",
              latency_buckets());
  r.histogram("llava_inter_token_latency_seconds",
              "Between two streamed pieces of one request's text.", latency_buckets());
  r.histogram("llava_e2e_request_latency_seconds", "From submission to the final answer.",
              latency_buckets());
  r.histogram("llava_vision_seconds",
              "From submission until the request's image embeddings were ready.",
              latency_buckets());
  r.counter("llava_prompt_tokens_total",
            "Prompt tokens of answered requests, image tokens included.");
  r.counter("llava_image_tokens_total", "Image tokens (embeddings) in answered requests' prompts.");
  r.counter("llava_generation_tokens_total", "Tokens generated for answered requests.");
  r.counter("llava_images_total", "Images in answered requests.");
  r.counter("llava_embedding_cache_queries_total", "Images looked up in the embedding cache.");
  r.counter("llava_embedding_cache_hits_total", "Images whose embeddings came from the cache.");
  r.gauge("llava_worker_up", "1 when the stage replica's worker is registered and not dead.");
  r.counter("llava_worker_restarts_total",
            "Times the stage replica's worker was restarted after a death.");
  r.gauge("llava_worker_peak_memory_bytes", "Peak device memory the worker reported.");
  r.gauge("llava_worker_load_seconds", "Seconds the worker took to load its weights, last load.");
  r.gauge("llava_worker_busy_seconds", "Seconds the worker spent working.");
  r.counter("llava_http_requests_total", "HTTP requests answered, by endpoint and status code.");
  r.histogram("llava_request_queue_seconds",
              "From submission until a worker was sent the request (either stage).", latency_buckets());
  r.gauge("llava_stage_queue_depth",
          "Requests waiting for a stage that no worker has been sent yet (stage vision: the vision queue).");
  r.gauge("llava_worker_tasks", "Requests sent to the stage replica's worker and not answered yet.");
  r.histogram("llava_image_preprocess_seconds",
              "Decoding and preprocessing the images of a vision batch, per request in it.",
              latency_buckets());
  r.histogram("llava_vision_encode_seconds",
              "A vision batch's whole time in the worker (preprocess + encoder + copy out), per request in it.",
              latency_buckets());
  r.counter("llava_images_encoded_total", "Images the stage replica encoded (cache misses).");
  r.gauge("llava_embedding_cache_bytes", "Bytes of image embeddings held in the coordinator's cache.");
  r.histogram("llava_embedding_handoff_seconds",
              "From a request's embeddings being ready until they were sent to the language stage.",
              latency_buckets());
  r.counter("llava_embedding_handoff_bytes_total", "Bytes of image embeddings sent to the language stage.");
  r.histogram("llava_prefill_seconds",
              "The language worker's time from taking a request up to its first token (prefill), "
              "last attempt.",
              latency_buckets());
  r.histogram("llava_lease_wait_seconds",
              "At each device grant: how long the oldest request needing that stage had waited.",
              latency_buckets());
  r.gauge("llava_kv_cache_usage_ratio",
          "Language replica: KV-cache slots held by sequences, over its slots (0 before the lease).");
  r.gauge("llava_worker_device_memory_bytes",
          "Device memory the worker's allocator holds now (reserved; CPU: resident bytes).");
  r.gauge("llava_worker_allocated_memory_bytes", "Device memory held by the worker's tensors now.");
}

void PipelineMetrics::on_lease_event(const LeaseEvent& event) {
  if (event.what != "granted" || event.wait_seconds < 0) return;
  registry_.observe("llava_lease_wait_seconds", {{"stage", worker_labels(event.process)[0].second}},
                    event.wait_seconds);
}

void PipelineMetrics::on_submitted(uint64_t request, int images) {
  open_[request].images = images;
}

void PipelineMetrics::on_text(uint64_t request) {
  auto it = open_.find(request);
  if (it == open_.end()) return;
  const auto now = Clock::now();
  if (it->second.generating) {
    registry_.observe("llava_inter_token_latency_seconds", {},
                      std::chrono::duration<double>(now - it->second.last_text).count());
  }
  it->second.generating = true;
  it->second.last_text = now;
}

void PipelineMetrics::on_result(const RequestResult& r) {
  int images = 0;
  if (auto it = open_.find(r.id); it != open_.end()) {
    images = it->second.images;
    open_.erase(it);
  }
  if (r.finish == "cancelled") {
    registry_.add("llava_requests_cancelled_total");
    return;
  }
  if (!r.ok) {
    registry_.add("llava_request_failures_total");
    return;
  }
  registry_.add("llava_request_success_total",
                {{"finish_reason", r.finish == "length" ? "length" : "stop"}});
  if (!r.tokens.empty())
    registry_.observe("llava_time_to_first_token_seconds", {}, r.first_token_ms / 1000);
  registry_.observe("llava_e2e_request_latency_seconds", {}, r.total_ms / 1000);
  if (images > 0) registry_.observe("llava_vision_seconds", {}, r.vision_ms / 1000);
  registry_.add("llava_prompt_tokens_total", {}, r.prompt_tokens);
  registry_.add("llava_image_tokens_total", {}, static_cast<double>(images * image_tokens_));
  registry_.add("llava_generation_tokens_total", {}, static_cast<double>(r.tokens.size()));
  registry_.add("llava_images_total", {}, images);
  registry_.add("llava_embedding_cache_queries_total", {}, images);
  registry_.add("llava_embedding_cache_hits_total", {}, r.cached_images);
  registry_.observe("llava_request_queue_seconds", {}, r.queue_ms / 1000);
  if (r.prefill_ms > 0) registry_.observe("llava_prefill_seconds", {}, r.prefill_ms / 1000);
  if (!r.vision_worker.empty()) {
    const MetricLabels labels = worker_labels(r.vision_worker);
    registry_.observe("llava_image_preprocess_seconds", labels, r.preprocess_ms / 1000);
    registry_.observe("llava_vision_encode_seconds", labels, r.encode_ms / 1000);
    registry_.add("llava_images_encoded_total", labels, images - r.cached_images);
  }
  if (r.embedding_bytes > 0) {
    registry_.observe("llava_embedding_handoff_seconds", {}, r.handoff_ms / 1000);
    registry_.add("llava_embedding_handoff_bytes_total", {}, static_cast<double>(r.embedding_bytes));
  }
}

void PipelineMetrics::refresh(const Coordinator& coordinator) {
  int running = 0;
  for (const auto& [id, open] : open_) running += open.generating;
  registry_.set("llava_requests_running", {}, running);
  registry_.set("llava_requests_waiting", {}, static_cast<double>(open_.size()) - running);
  // A worker is up from its registration until it exits or is declared dead.
  std::map<std::string, bool> up;
  for (const auto& event : coordinator.timeline()) {
    if (event.what == "registered" || event.what == "granted") up[event.process] = true;
    if (event.what == "exited" || event.what == "died") up[event.process] = false;
  }
  for (const auto& report : coordinator.reports()) {
    const MetricLabels labels = worker_labels(report.process);
    registry_.set("llava_worker_up", labels, up[report.process] ? 1 : 0);
    int& seen = restarts_seen_[report.process];
    if (report.restarts > seen)
      registry_.add("llava_worker_restarts_total", labels, report.restarts - seen);
    seen = std::max(seen, report.restarts);
    if (seen == 0)
      registry_.add("llava_worker_restarts_total", labels, 0);  // the series exists from the start
    MetricLabels with_device = labels;
    with_device.emplace_back("device", report.device);
    registry_.set("llava_worker_peak_memory_bytes", with_device,
                  static_cast<double>(report.peak_bytes));
    registry_.set("llava_worker_load_seconds", labels, report.load_seconds);
    registry_.set("llava_worker_busy_seconds", labels, report.work_seconds);
    registry_.set("llava_worker_tasks", labels, static_cast<double>(report.tasks));
    registry_.set("llava_worker_device_memory_bytes", with_device, static_cast<double>(report.device_bytes));
    registry_.set("llava_worker_allocated_memory_bytes", with_device,
                  static_cast<double>(report.allocated_bytes));
    if (labels[0].second == "language") {
      registry_.set("llava_kv_cache_usage_ratio", labels,
                    report.kv_slots == 0 ? 0.0 : static_cast<double>(report.kv_slots_used) / report.kv_slots);
    }
  }
  const StageQueues queues = coordinator.queues();
  registry_.set("llava_stage_queue_depth", {{"stage", "vision"}}, static_cast<double>(queues.vision));
  registry_.set("llava_stage_queue_depth", {{"stage", "language"}}, static_cast<double>(queues.language));
  registry_.set("llava_embedding_cache_bytes", {}, static_cast<double>(coordinator.embedding_cache_bytes()));
}

void PipelineMetrics::on_http_response(const std::string& endpoint, int status) {
  registry_.add("llava_http_requests_total",
                {{"endpoint", endpoint}, {"code", std::to_string(status)}});
  if (status >= 400)
    registry_.add("llava_request_errors_total", {{"code", std::to_string(status)}});
}

}  // namespace llava
