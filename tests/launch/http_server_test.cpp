// The HTTP front without a pipeline: routing, authentication, the body cap, validation
// errors in the OpenAI envelope, /v1/models, and /health once the coordinator's loop ended.
// (Answers that need the pipeline: tests/http/run.sh, with the openai client.)
#include "launch/http_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "common/config.h"

namespace llava {
namespace {

class HttpServerTest : public testing::Test {
 protected:
  void start(ServerSection server = {}) {
    config_ = load_config(LLAVA_PIPE_SOURCE_DIR "/configs/tiny-random.yaml");
    template_ =
        std::make_unique<ChatTemplate>(config_.model.checkpoint, config_.generation.chat_template);
    http_ = std::make_unique<HttpServer>(config_, server, *template_, "tiny-llava", metrics_);
    port_ = http_->start("127.0.0.1", 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
  }
  nlohmann::json error_of(const httplib::Result& r) {
    return nlohmann::json::parse(r->body)["error"];
  }

  PipelineConfig config_;
  PipelineMetrics metrics_{576};
  std::unique_ptr<ChatTemplate> template_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<httplib::Client> client_;
  int port_ = 0;
};

TEST_F(HttpServerTest, ListsTheOneModel) {
  start();
  auto r = client_->Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const auto body = nlohmann::json::parse(r->body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "tiny-llava");
}

TEST_F(HttpServerTest, UnknownPathsAre404AndWrongMethods405InTheEnvelope) {
  start();
  auto missing = client_->Get("/v1/engines");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(error_of(missing)["type"], "invalid_request_error");
  auto wrong = client_->Get("/v1/chat/completions");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 405);
  EXPECT_NE(error_of(wrong)["message"].get<std::string>().find("GET is not allowed"),
            std::string::npos);
}

TEST_F(HttpServerTest, InvalidJsonAndBadImagesAre400BeforeThePipeline) {
  start();
  auto bad_json = client_->Post("/v1/chat/completions", "{oops", "application/json");
  ASSERT_TRUE(bad_json);
  EXPECT_EQ(bad_json->status, 400);
  auto bad_image = client_->Post(
      "/v1/chat/completions",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,!!"}}]}]})",
      "application/json");
  ASSERT_TRUE(bad_image);
  EXPECT_EQ(bad_image->status, 400);
  EXPECT_EQ(error_of(bad_image)["param"], "messages[0].content[0]");
}

TEST_F(HttpServerTest, ABodyOverTheCapIs413) {
  ServerSection server;
  server.max_body_bytes = 4096;
  start(server);
  auto r = client_->Post("/v1/chat/completions", std::string(5000, ' '), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("server.max_body_bytes"),
            std::string::npos);
}

TEST_F(HttpServerTest, WithAnApiKeyEveryApiCallNeedsItButHealthAndMetricsDoNot) {
  ServerSection server;
  server.api_key = "sesame";
  start(server);
  auto none = client_->Get("/v1/models");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(error_of(none)["type"], "authentication_error");
  auto wrong = client_->Get("/v1/models", {{"Authorization", "Bearer open"}});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  auto right = client_->Get("/v1/models", {{"Authorization", "Bearer sesame"}});
  ASSERT_TRUE(right);
  EXPECT_EQ(right->status, 200);
  http_->close("the server is shutting down");  // answers /metrics without a coordinator
  auto metrics = client_->Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
}

TEST_F(HttpServerTest, HealthIs503WithTheReasonOnceTheLoopHasEnded) {
  start();
  http_->close("the server is shutting down");
  auto r = client_->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(nlohmann::json::parse(r->body)["reason"], "shutting down");
}

TEST_F(HttpServerTest, ARequestAfterTheLoopEndedIs503NotAHang) {
  start();
  http_->close("the server is shutting down");
  auto r = client_->Post("/v1/chat/completions",
                         R"({"model":"m","messages":[{"role":"user","content":"hi"}]})",
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("shutting down"), std::string::npos);
}

}  // namespace
}  // namespace llava
