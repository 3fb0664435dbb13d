// The metrics registry's Prometheus text: exact lines for each kind, escaping, and the whole
// of llava-pipe's families checked by promtool (Debian's prometheus package).
#include "launch/metrics.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "coordinator/coordinator.h"

namespace llava {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// promtool's verdict on `text`: its exit status and what it printed.
std::pair<int, std::string> promtool_check(const std::string& text) {
  const std::string path = testing::TempDir() + "metrics.txt";
  std::ofstream(path) << text;
  FILE* pipe = popen(("promtool check metrics < " + path + " 2>&1").c_str(), "r");
  std::string out;
  char buffer[512];
  while (pipe && std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
  const int status = pipe ? pclose(pipe) : -1;
  return {status, out};
}

TEST(Metrics, CountersAndGaugesRenderHelpTypeAndLabelledSeries) {
  MetricsRegistry r;
  r.counter("demo_requests_total", "Requests.");
  r.gauge("demo_queue_depth", "Waiting.");
  r.add("demo_requests_total", {{"code", "200"}});
  r.add("demo_requests_total", {{"code", "200"}}, 2);
  r.set("demo_queue_depth", {}, 0.25);
  EXPECT_EQ(r.render(),
            "# HELP demo_queue_depth Waiting.\n"
            "# TYPE demo_queue_depth gauge\n"
            "demo_queue_depth 0.25\n"
            "# HELP demo_requests_total Requests.\n"
            "# TYPE demo_requests_total counter\n"
            "demo_requests_total{code=\"200\"} 3\n");
}

TEST(Metrics, HistogramsRenderCumulativeBucketsSumAndCount) {
  MetricsRegistry r;
  r.histogram("demo_seconds", "Latency.", {0.1, 1});
  r.observe("demo_seconds", {}, 0.05);
  r.observe("demo_seconds", {}, 0.1);  // on a bound: counted in that bucket (le)
  r.observe("demo_seconds", {}, 3);
  EXPECT_EQ(r.render(),
            "# HELP demo_seconds Latency.\n"
            "# TYPE demo_seconds histogram\n"
            "demo_seconds_bucket{le=\"0.1\"} 2\n"
            "demo_seconds_bucket{le=\"1\"} 2\n"
            "demo_seconds_bucket{le=\"+Inf\"} 3\n"
            "demo_seconds_sum 3.15\n"
            "demo_seconds_count 3\n");
}

TEST(Metrics, LabelValuesAreEscaped) {
  MetricsRegistry r;
  r.gauge("demo_info", "Help with a \\ backslash\nand a newline.");
  r.set("demo_info", {{"path", "a\"b\\c\nd"}}, 1);
  const std::string text = r.render();
  EXPECT_TRUE(contains(text, "demo_info{path=\"a\\\"b\\\\c\\nd\"} 1\n")) << text;
  EXPECT_TRUE(contains(text, "# HELP demo_info Help with a \\\\ backslash\\nand a newline.\n"))
      << text;
}

TEST(Metrics, MisuseIsAnErrorNotASilentSeries) {
  MetricsRegistry r;
  r.counter("demo_total", "x");
  EXPECT_THROW(r.counter("demo_total", "again"), std::logic_error);
  EXPECT_THROW(r.add("demo_total", {}, -1), std::logic_error);
  EXPECT_THROW(r.set("demo_total", {}, 1), std::logic_error);
  EXPECT_THROW(r.add("undeclared_total"), std::logic_error);
}

TEST(Metrics, PipelineMetricsFromResultsPassPromtool) {
  PipelineMetrics m(576);
  m.on_submitted(1, 2);
  m.on_text(1);
  m.on_text(1);
  RequestResult ok;
  ok.id = 1;
  ok.ok = true;
  ok.finish = "eos";
  ok.tokens = {5, 6, 7};
  ok.prompt_tokens = 1170;
  ok.first_token_ms = 80;
  ok.total_ms = 120;
  ok.cached_images = 1;
  ok.queue_ms = 3;
  ok.vision_worker = "vision-1";
  ok.preprocess_ms = 4;
  ok.encode_ms = 30;
  ok.embedding_bytes = 2 * 576 * 4096 * 2;
  ok.handoff_ms = 0.5;
  ok.prefill_ms = 20;
  m.on_result(ok);
  LeaseEvent granted;
  granted.process = "language-0";
  granted.what = "granted";
  granted.wait_seconds = 0.25;
  m.on_lease_event(granted);
  granted.wait_seconds = -1;  // nothing waited (a concurrent start): not a wait
  m.on_lease_event(granted);
  m.on_submitted(2, 0);
  RequestResult cancelled;
  cancelled.id = 2;
  cancelled.finish = "cancelled";
  cancelled.error = "cancelled: the client disconnected";
  m.on_result(cancelled);
  m.on_http_response("/v1/chat/completions", 200);
  m.on_http_response("/v1/chat/completions", 429);
  const std::string text = m.registry().render();
  EXPECT_TRUE(contains(text, "llava_request_success_total{finish_reason=\"stop\"} 1\n")) << text;
  EXPECT_TRUE(contains(text, "llava_requests_cancelled_total 1\n"));
  EXPECT_TRUE(contains(text, "llava_image_tokens_total 1152\n"));
  EXPECT_TRUE(contains(text, "llava_generation_tokens_total 3\n"));
  EXPECT_TRUE(contains(text, "llava_embedding_cache_hits_total 1\n"));
  EXPECT_TRUE(contains(text, "llava_embedding_cache_queries_total 2\n"));
  EXPECT_TRUE(contains(text, "llava_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_TRUE(contains(text, "llava_inter_token_latency_seconds_count 1\n"));
  EXPECT_TRUE(contains(text, "llava_request_errors_total{code=\"429\"} 1\n"));
  EXPECT_TRUE(contains(text, "llava_request_queue_seconds_bucket{le=\"0.005\"} 1\n")) << text;
  EXPECT_TRUE(contains(text, "llava_image_preprocess_seconds_sum{stage=\"vision\",replica=\"1\"} 0.004\n")) << text;
  EXPECT_TRUE(contains(text, "llava_vision_encode_seconds_sum{stage=\"vision\",replica=\"1\"} 0.03\n")) << text;
  EXPECT_TRUE(contains(text, "llava_images_encoded_total{stage=\"vision\",replica=\"1\"} 1\n")) << text;
  EXPECT_TRUE(contains(text, "llava_embedding_handoff_bytes_total 9437184\n")) << text;
  EXPECT_TRUE(contains(text, "llava_embedding_handoff_seconds_sum 0.0005\n")) << text;
  EXPECT_TRUE(contains(text, "llava_prefill_seconds_sum 0.02\n")) << text;
  EXPECT_TRUE(contains(text, "llava_prefill_seconds_count 1\n")) << text;
  EXPECT_TRUE(contains(text, "llava_lease_wait_seconds_count{stage=\"language\"} 1\n")) << text;
  EXPECT_TRUE(contains(text, "llava_lease_wait_seconds_sum{stage=\"language\"} 0.25\n")) << text;
  const auto [status, out] = promtool_check(text);
  ASSERT_NE(status, -1);
  if (WEXITSTATUS(status) == 127)
    FAIL() << "promtool is missing: install Debian's prometheus package";
  EXPECT_EQ(status, 0) << out << "\n" << text;
}

}  // namespace
}  // namespace llava
