// The HTTP server's frame: listening, and the hand-off between httplib's handler threads
// and the coordinator's thread (posted commands one way, each request's RequestChannel the
// other). The routes are http_routes.cpp; the completions http_completions.cpp.
#include "launch/http_server.h"

#include <httplib.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "common/errors.h"
#include "coordinator/coordinator.h"
#include "launch/http_replies.h"
#include "launch/request_channel.h"

namespace llava {

int HttpServer::status_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadRequest:
      return 400;
    case ErrorKind::kOverloaded:
      return 429;
    case ErrorKind::kUnavailable:
      return 503;
    case ErrorKind::kCancelled:
      return 499;  // nginx's "client closed request": nobody reads it
    case ErrorKind::kNone:
    case ErrorKind::kInternal:
      break;
  }
  return 500;
}

HttpServer::HttpServer(const PipelineConfig& config, const ServerSection& server,
                       const ChatTemplate& chat_template, std::string model_id,
                       PipelineMetrics& metrics)
    : config_(config),
      server_(server),
      chat_template_(chat_template),
      model_id_(std::move(model_id)),
      metrics_(metrics),
      http_(std::make_unique<httplib::Server>()),
      started_(unix_now()) {
  routes();
}

HttpServer::~HttpServer() {
  stop();
}

int HttpServer::start(const std::string& host, int port) {
  const int threads = server_.max_connections;
  http_->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  http_->set_payload_max_length(server_.max_body_bytes);
  http_->set_tcp_nodelay(true);  // SSE events go out as they are written
  http_->set_keep_alive_max_count(1000);
  http_->set_read_timeout(30);
  http_->set_write_timeout(30);
  int bound = port;
  if (port == 0) {
    bound = http_->bind_to_any_port(host);
  } else if (!http_->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    throw ConfigError("--http " + host + ":" + std::to_string(port) + ": cannot listen there (" +
                      std::strerror(errno) +
                      "; address in use, or not an address of this machine?)");
  }
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  return bound;
}

void HttpServer::stop() {
  if (http_) http_->stop();
  if (listener_.joinable()) listener_.join();
}

void HttpServer::post(Command command) {
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    if (!closed_) {
      commands_.push_back(std::move(command));
      if (on_command) on_command();
      return;
    }
  }
  command(nullptr);  // the loop has ended: no coordinator
}

bool HttpServer::has_commands() const {
  std::lock_guard<std::mutex> lock(commands_mutex_);
  return !commands_.empty();
}

bool HttpServer::run_commands(Coordinator& coordinator) {
  std::deque<Command> batch;
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    batch.swap(commands_);
  }
  for (auto& command : batch) command(&coordinator);
  return !batch.empty();
}

bool HttpServer::on_text(uint64_t request, const std::string& text) {
  auto it = open_.find(request);
  if (it == open_.end()) return false;
  it->second->text(text);
  return true;
}

bool HttpServer::on_result(const RequestResult& result) {
  auto it = open_.find(result.id);
  if (it == open_.end()) {
    if (!submitting_) return false;
    submitting_->finish(result);  // refused inside submit(), before its id was known here
    return true;
  }
  it->second->finish(result);
  open_.erase(it);
  return true;
}

void HttpServer::close(const std::string& why) {
  std::deque<Command> left;
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    closed_ = true;
    left.swap(commands_);
  }
  for (auto& command : left) command(nullptr);
  for (auto& [id, channel] : open_) {
    RequestResult result;
    result.id = id;
    result.error = why;
    result.error_kind = ErrorKind::kUnavailable;
    channel->finish(result);
  }
  open_.clear();
}

void HttpServer::cancel(const std::shared_ptr<RequestChannel>& channel) {
  post([this, channel](Coordinator* coordinator) {
    const auto id = channel->id();
    if (coordinator && id && coordinator->cancel(*id, "cancelled: the client disconnected")) {
      std::cerr << "llava-pipe: request " << *id << ": the HTTP client disconnected; cancelled\n";
    }
  });
}

}  // namespace llava
