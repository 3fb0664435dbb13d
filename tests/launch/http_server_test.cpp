// The HTTP front without a pipeline: routing, authentication, the body cap, validation
// errors in the OpenAI envelope, /v1/models, and /health once the coordinator's loop ended.
// (Answers that need the pipeline: tests/http/run.sh, with the openai client.)
#include "launch/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/config.h"
#include "common/errors.h"
#include "launch/receive_budget.h"

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
  // A body nested a million levels deep (2 MB) is invalid JSON here: showing it in the
  // error recursed a frame per level and ended the server.
  const std::string deep(1000000, '[');
  for (const char* path : {"/v1/chat/completions", "/v1/completions", "/tokenize"}) {
    auto refused = client_->Post(path, "{\"prompt\": " + deep + std::string(deep.size(), ']') + "}",
                                 "application/json");
    ASSERT_TRUE(refused) << path;
    EXPECT_EQ(refused->status, 400) << path;
  }
  auto chat = client_->Post("/v1/chat/completions", "{\"messages\": " + deep, "application/json");
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 400);
  EXPECT_NE(error_of(chat)["message"].get<std::string>().find("nested deeper than 128 levels"),
            std::string::npos);
  auto models = client_->Get("/v1/models");  // still serving
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
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

// A body sent in chunks (no Content-Length) of `bytes` bytes, in pieces of 1000.
httplib::Result post_chunked(httplib::Client& client, const std::string& path, size_t bytes,
                             char fill) {
  return client.Post(
      path.c_str(),
      [bytes, fill](size_t offset, httplib::DataSink& sink) {
        if (offset >= bytes) {
          sink.done();
          return true;
        }
        const std::string piece(std::min<size_t>(1000, bytes - offset), fill);
        return sink.write(piece.data(), piece.size());
      },
      "application/json");
}

// httplib caps a body by its Content-Length, but read a chunked one whole, however long:
// every POST route reads its body itself, up to the cap. Past it, a body up to twice the
// cap is read and dropped, and its client gets the 413; a longer one has its connection
// cut (and the server goes on). Under the cap a chunked body arrives whole (here: not JSON,
// so 400 from the parser, which read it).
TEST_F(HttpServerTest, AChunkedBodyOverTheCapIs413AndOneUnderItIsRead) {
  ServerSection server;
  server.max_body_bytes = 4096;
  start(server);
  for (const char* path : {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}) {
    httplib::Client first("127.0.0.1", port_);
    auto over = post_chunked(first, path, 6000, ' ');
    ASSERT_TRUE(over) << path;
    EXPECT_EQ(over->status, 413) << path;
    EXPECT_NE(error_of(over)["message"].get<std::string>().find("server.max_body_bytes (4096"),
              std::string::npos)
        << path;
    httplib::Client second("127.0.0.1", port_);
    // The connection is cut; a client whose 1 MiB fitted the socket's buffers before the
    // cut reads the 413.
    if (auto cut = post_chunked(second, path, 1 << 20, ' ')) {
      EXPECT_EQ(cut->status, 413) << path;
    }
    httplib::Client third("127.0.0.1", port_);
    auto under = post_chunked(third, path, 4000, 'x');
    ASSERT_TRUE(under) << path;
    EXPECT_EQ(under->status, 400) << path;
  }
  auto whole = post_chunked(*client_, "/v1/chat/completions", 4000, 'x');
  ASSERT_TRUE(whole);
  EXPECT_NE(error_of(whole)["message"].get<std::string>().find("not valid JSON"),
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

// A socket connected to 127.0.0.1:port, or -1.
int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A raw connection that starts a POST and stalls in its body: it holds one of the API's
// handler threads until it closes (a slow upload, or a client that means harm).
class StalledUpload {
 public:
  explicit StalledUpload(int port) : fd_(connect_to(port)) {
    const std::string head =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n{\"messages\":";
    connected_ =
        fd_ >= 0 && send(fd_, head.data(), head.size(), 0) == static_cast<ssize_t>(head.size());
  }
  ~StalledUpload() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return connected_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// With every API thread held by stalled uploads, the API's own /health waits behind them,
// while the probes' port answers /health and /metrics at once, and serves nothing else.
TEST_F(HttpServerTest, ProbesAreAnsweredWhileEveryApiConnectionIsTaken) {
  ServerSection server;
  server.max_connections = 2;
  start(server);
  const int probes = http_->start_probes("127.0.0.1", 0);
  ASSERT_GT(probes, 0);
  ASSERT_NE(probes, port_);
  http_->close("the server is shutting down");  // /health answers without a coordinator
  std::vector<std::unique_ptr<StalledUpload>> stalled;
  for (int i = 0; i < server.max_connections; ++i) {
    stalled.push_back(std::make_unique<StalledUpload>(port_));
    ASSERT_TRUE(stalled.back()->connected());
  }
  // The API's port: queued behind the two uploads, which hold its threads for the 30 s
  // read timeout; this client gives up after 1 s.
  httplib::Client api("127.0.0.1", port_);
  api.set_read_timeout(1, 0);
  api.set_write_timeout(1, 0);
  EXPECT_FALSE(api.Get("/health"));
  httplib::Client prober("127.0.0.1", probes);
  auto health = prober.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(nlohmann::json::parse(health->body)["reason"], "shutting down");
  auto metrics = prober.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("llava_"), std::string::npos);
  // Only the probes there: not the API.
  auto models = prober.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 404);
  auto chat = prober.Post("/v1/chat/completions", "{}", "application/json");
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 404);
  stalled.clear();  // their handlers see the close and end
}

// Clients that keep their connections after an answer (the openai SDKs pool them) do not
// hold the API's threads: with keep_alive off (the default) every answer closes its
// connection, and a new client is answered while both earlier clients still hold theirs.
// With httplib's default (5 s) it waited behind them; this client gives up after 2 s.
TEST_F(HttpServerTest, IdleClientConnectionsDoNotHoldTheApisThreads) {
  ServerSection server;
  server.max_connections = 2;
  start(server);
  std::vector<std::unique_ptr<httplib::Client>> idle;
  for (int i = 0; i < server.max_connections; ++i) {
    idle.push_back(std::make_unique<httplib::Client>("127.0.0.1", port_));
    idle.back()->set_keep_alive(true);
    auto r = idle.back()->Get("/v1/models");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->get_header_value("Connection"), "close");
  }
  httplib::Client late("127.0.0.1", port_);
  late.set_read_timeout(2, 0);
  auto r = late.Get("/v1/models");
  ASSERT_TRUE(r) << "a third client waited behind two idle connections";
  EXPECT_EQ(r->status, 200);
}

// What a client that sends `head` at once and then `trickle` a byte every 100 ms got: the
// bytes of `trickle` it sent before the server answered or closed, and the answer.
struct Trickled {
  size_t sent = 0;
  std::string answer;
  bool closed = false;  // by the server, within 2 s of its answer
};
Trickled trickle(int port, const std::string& head, const std::string& trickle) {
  Trickled result;
  const int fd = connect_to(port);
  if (fd < 0) return result;
  pollfd ready{fd, POLLIN, 0};
  if (head.empty() || send(fd, head.data(), head.size(), MSG_NOSIGNAL) == ssize_t(head.size())) {
    for (; result.sent < trickle.size(); ++result.sent) {
      if (send(fd, &trickle[result.sent], 1, MSG_NOSIGNAL) != 1) break;
      if (poll(&ready, 1, 100) != 0) break;  // an answer, or the connection closed
    }
  }
  char buffer[4096];
  while (poll(&ready, 1, 2000) > 0) {
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) {
      result.closed = true;
      break;
    }
    result.answer.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return result;
}

// 40 KB of headers: 400 lines of 100 bytes, under receive_budget's 64 KiB.
httplib::Headers many_headers() {
  httplib::Headers headers;
  for (int i = 0; i < 400; ++i) headers.emplace("X-Pad-" + std::to_string(i), std::string(88, 'a'));
  return headers;
}

// An endless header block: its connection is dropped once it passes 64 KiB, before its 32
// MiB are sent (httplib kept every line: memory grew with them), and the server answers
// the next client. 40 KB of headers are served, twice on one kept-alive connection: each
// request has a budget of its own.
TEST_F(HttpServerTest, AnEndlessHeaderBlockIsCutAndLargeHeadersAreServed) {
  ServerSection server;
  server.keep_alive_ms = 5000;
  start(server);
  const int fd = connect_to(port_);
  ASSERT_GE(fd, 0);
  std::string flood = "GET /v1/models HTTP/1.1\r\nHost: x\r\n";
  const std::string line = "X-Pad: " + std::string(91, 'a') + "\r\n";
  while (flood.size() < (1u << 20)) flood += line;  // 1 MiB of lines
  size_t sent = 0;
  bool cut = false;
  while (sent < (32u << 20) && !cut) {
    const ssize_t n = send(fd, flood.data(), flood.size(), MSG_NOSIGNAL);
    if (n < 0) {
      cut = true;
    } else {
      sent += static_cast<size_t>(n);
    }
  }
  close(fd);
  EXPECT_TRUE(cut) << sent << " bytes of headers were taken";
  // Headers that end 2 bytes past the budget are answered 431 (the answer is read before
  // the reset that the 2 unread bytes make of the server's close).
  std::string exact = flood.substr(0, flood.find("X-Pad"));
  while (receive_budget::kHeaderBytes - exact.size() >= line.size() + 6) exact += line;
  exact += "X: " + std::string(receive_budget::kHeaderBytes - exact.size() - 5, 'b') + "\r\n";
  ASSERT_EQ(exact.size(), size_t(receive_budget::kHeaderBytes));
  const Trickled at_the_cap = trickle(port_, exact + "\r\n", "");
  EXPECT_EQ(at_the_cap.answer.rfind("HTTP/1.1 431", 0), 0u) << at_the_cap.answer;
  httplib::Client kept("127.0.0.1", port_);
  kept.set_keep_alive(true);
  for (int i = 0; i < 2; ++i) {
    auto r = kept.Get("/v1/models", many_headers());
    ASSERT_TRUE(r) << "request " << i;
    EXPECT_EQ(r->status, 200) << "request " << i;
  }
}

// A request sent a byte every 100 ms is cut server.receive_timeout (1 s here) after its
// first byte: httplib times each read (30 s) but not a request, so a client that sent a
// byte every few seconds held a handler thread as long as it liked (all of them, with
// max_connections such clients). It gets 408, and its connection is closed at once (not
// kept alive). The timeout counts from a request's first byte, so a kept-alive connection
// that waited longer than it for its next request is served.
TEST_F(HttpServerTest, ARequestSentSlowerThanTheReceiveTimeoutIsCut) {
  ServerSection server;
  server.receive_timeout_ms = 1000;
  server.keep_alive_ms = 5000;
  server.max_connections = 2;
  start(server);
  // 300 bytes of headers: 30 s at this pace.
  const std::string headers =
      "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(250, 'a') + "\r\n\r\n";
  const Trickled in_headers = trickle(port_, "", headers);
  EXPECT_LT(in_headers.sent, 40u) << "the headers were taken for " << in_headers.sent / 10.0
                                  << " s";
  EXPECT_EQ(in_headers.answer.rfind("HTTP/1.1 408", 0), 0u) << in_headers.answer;
  EXPECT_TRUE(in_headers.closed);  // not kept alive, whatever keep_alive says
  const std::string body =
      R"({"model":"m","messages":[{"role":"user","content":")" + std::string(250, 'a') + R"("}]})";
  const Trickled in_body = trickle(port_,
                                   "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Type: application/json\r\nContent-Length: " +
                                       std::to_string(body.size()) + "\r\n\r\n",
                                   body);
  EXPECT_LT(in_body.sent, 40u) << "the body was taken for " << in_body.sent / 10.0 << " s";
  EXPECT_EQ(in_body.answer.rfind("HTTP/1.1 408", 0), 0u) << in_body.answer;
  EXPECT_NE(in_body.answer.find("server.receive_timeout (1 s)"), std::string::npos)
      << in_body.answer;
  EXPECT_TRUE(in_body.closed);

  httplib::Client kept("127.0.0.1", port_);
  kept.set_keep_alive(true);
  auto first = kept.Get("/v1/models");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 200);
  EXPECT_NE(first->get_header_value("Connection"), "close");     // the next request reuses it
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // idle, longer than the timeout
  auto second = kept.Get("/v1/models");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 200);
}

// A 413 ends its connection at once with keep-alive on, too: the server reads no more of
// it, and does not wait there for a next request (it waited keep_alive, 5 s here, for a
// client told to close).
TEST_F(HttpServerTest, AnAnswerThatEndsTheConnectionClosesItWithKeepAliveOn) {
  ServerSection server;
  server.keep_alive_ms = 5000;
  server.max_body_bytes = 1024;
  start(server);
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
  const std::string body(1500, 'x');
  for (const std::string& request :
       {head + "Content-Length: 1500\r\n\r\n" + body,
        head + "Transfer-Encoding: chunked\r\n\r\n5dc\r\n" + body + "\r\n0\r\n\r\n"}) {
    const Trickled answered = trickle(port_, request, "");
    EXPECT_EQ(answered.answer.rfind("HTTP/1.1 413", 0), 0u) << answered.answer;
    EXPECT_NE(answered.answer.find("Connection: close"), std::string::npos) << answered.answer;
    EXPECT_TRUE(answered.closed) << request.substr(0, 80);
  }
}

// A port another server listens on is refused, naming the flag: without this, httplib's
// SO_REUSEPORT let a second server share the port, each getting some of the connections.
TEST_F(HttpServerTest, APortAnotherServerListensOnIsRefusedNamingTheFlag) {
  start();
  HttpServer second(config_, ServerSection{}, *template_, "tiny-llava", metrics_);
  auto refusal = [&](const std::function<int()>& listen) {
    try {
      listen();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("listening");
  };
  const std::string where = " 127.0.0.1:" + std::to_string(port_) + ": cannot listen there";
  EXPECT_EQ(refusal([&] { return second.start("127.0.0.1", port_); }).rfind("--http" + where, 0),
            0u);
  EXPECT_EQ(
      refusal([&] { return http_->start_probes("127.0.0.1", port_); }).rfind("--probes" + where, 0),
      0u);
}

}  // namespace
}  // namespace llava
