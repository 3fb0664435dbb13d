// The HTTP server's frame: listening, and the hand-off between httplib's handler threads
// and the coordinator's thread (posted commands one way, each request's RequestChannel the
// other). The routes are http_routes.cpp; the completions http_completions.cpp.
#include "launch/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>

#include "common/errors.h"
#include "coordinator/coordinator.h"
#include "launch/http_replies.h"
#include "launch/receive_budget.h"
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
      probes_(std::make_unique<httplib::Server>()),
      started_(unix_now()) {
  routes();
}

HttpServer::~HttpServer() {
  stop();
}

namespace {

// httplib's pool, each connection inside receive_budget's (the logger starts each next
// request's).
class BudgetedPool : public httplib::ThreadPool {
 public:
  using httplib::ThreadPool::ThreadPool;
  void enqueue(std::function<void()> handle_connection) override {
    httplib::ThreadPool::enqueue([handle = std::move(handle_connection)] {
      receive_budget::connection_begins();
      handle();
      receive_budget::connection_ends();
    });
  }
};

// Binds `server` to HOST:PORT and answers on `listener`; `flag` names the option in errors.
// SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, with which a second server binds a
// port another one of the same user is listening on, and the kernel splits the connections
// between them, instead of the second one failing with "address in use".
int listen_on(httplib::Server& server, std::thread& listener, const std::string& host, int port,
              const std::string& flag) {
  server.set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  int bound = port;
  if (port == 0) {
    bound = server.bind_to_any_port(host);
  } else if (!server.bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    throw ConfigError(flag + " " + host + ":" + std::to_string(port) + ": cannot listen there (" +
                      std::strerror(errno) +
                      "; address in use, or not an address of this machine?)");
  }
  // Returns once the server is running: httplib's stop() does nothing before that, so a
  // stop() right after start() would leave the listener running and its join waiting.
  auto ended = std::make_shared<std::atomic<bool>>(false);
  listener = std::thread([&server, ended] {
    server.listen_after_bind();
    *ended = true;
  });
  while (!server.is_running() && !*ended) std::this_thread::yield();
  return bound;
}

}  // namespace

int HttpServer::start(const std::string& host, int port) {
  const int threads = server_.max_connections;
  http_->new_task_queue = [threads] { return new BudgetedPool(static_cast<size_t>(threads)); };
  http_->set_payload_max_length(server_.max_body_bytes);
  http_->set_tcp_nodelay(true);  // SSE events go out as they are written
  if (server_.keep_alive_ms == 0) {
    http_->set_keep_alive_max_count(1);  // "Connection: close" on every response
  } else {
    http_->set_keep_alive_max_count(1000);
    http_->set_keep_alive_timeout(static_cast<time_t>(server_.keep_alive_ms / 1000));
  }
  http_->set_read_timeout(30);
  http_->set_write_timeout(30);
  receive_budget::set_timeout_ms(server_.receive_timeout_ms);
  return listen_on(*http_, listener_, host, port, "--http");
}

int HttpServer::start_probes(const std::string& host, int port) {
  probes_->new_task_queue = [] { return new BudgetedPool(kProbeThreads); };
  probes_->set_payload_max_length(4096);  // GETs only
  probes_->set_keep_alive_max_count(1);
  probes_->set_read_timeout(5);
  probes_->set_write_timeout(5);
  return listen_on(*probes_, probes_listener_, host, port, "--probes");
}

void HttpServer::stop() {
  for (auto* server : {http_.get(), probes_.get()}) {
    if (server) server->stop();
  }
  if (listener_.joinable()) listener_.join();
  if (probes_listener_.joinable()) probes_listener_.join();
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
  it->second.channel->text(it->second.choice, text);
  return true;
}

void HttpServer::on_logprobs(uint64_t request, const std::vector<TokenLogprob>& logprobs) {
  auto it = open_.find(request);
  if (it != open_.end()) it->second.channel->logprobs(it->second.choice, logprobs);
}

bool HttpServer::on_result(const RequestResult& result) {
  auto it = open_.find(result.id);
  if (it == open_.end()) {
    if (!submitting_.channel) return false;
    // refused inside submit(), before its id was known here
    submitting_.channel->finish(submitting_.choice, result);
    return true;
  }
  it->second.channel->finish(it->second.choice, result);
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
  for (auto& [id, open] : open_) {
    RequestResult result;
    result.id = id;
    result.error = why;
    result.error_kind = ErrorKind::kUnavailable;
    open.channel->finish(open.choice, result);
  }
  open_.clear();
}

void HttpServer::cancel(const std::shared_ptr<RequestChannel>& channel, const std::string& why) {
  post([channel, why](Coordinator* coordinator) {
    if (!coordinator) return;
    for (uint64_t id : channel->ids()) {
      if (coordinator->cancel(id, "cancelled: " + why)) {
        std::cerr << "llava-pipe: request " << id << ": " << why << "; cancelled\n";
      }
    }
  });
}

}  // namespace llava
