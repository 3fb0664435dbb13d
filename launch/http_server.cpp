// The HTTP front: routes, the hand-off to the coordinator's thread, and each request's
// channel back. A handler parses and validates (400s never reach the coordinator), fetches
// the images, renders the chat template, posts a submit, then waits on its channel and the
// client's socket together: text, the result, a client gone (cancel), or the timeout.
#include "launch/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <future>
#include <iostream>
#include <optional>

#include "common/errors.h"
#include "coordinator/coordinator.h"
#include "launch/openai_api.h"
#include "launch/openai_images.h"
#include "launch/request_json.h"

namespace llava {

using Clock = std::chrono::steady_clock;

// One request's way back from the coordinator's thread to its handler: text so far and the
// result, under a mutex; an eventfd says "something changed" so that the handler can poll it
// together with its client's socket.
class RequestChannel {
 public:
  enum class Wake { kReady, kClientGone, kTimedOut };

  RequestChannel() : event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (event_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  }
  ~RequestChannel() { ::close(event_); }
  RequestChannel(const RequestChannel&) = delete;
  RequestChannel& operator=(const RequestChannel&) = delete;

  // ---- the coordinator's thread
  void accept(uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    id_ = id;
    notify();
  }
  void text(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    text_ += text;
    notify();
  }
  void finish(const RequestResult& result) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!result_) result_ = result;
    notify();
  }

  // ---- the handler's thread
  std::optional<uint64_t> id() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return id_;
  }
  bool accepted() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return id_.has_value() || result_.has_value();
  }
  bool finished() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return result_.has_value();
  }
  // The text not taken yet, and the result once there is one (all its text is taken with it).
  bool take(std::string& text, std::optional<RequestResult>& result) {
    std::lock_guard<std::mutex> lock(mutex_);
    text.swap(text_);
    text_.clear();
    result = result_;
    return !text.empty() || result.has_value();
  }
  bool has_news() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return !text_.empty() || result_.has_value();
  }

  // Until `ready()` holds, the client's socket (when known, -1 if not) hangs up, or `deadline`.
  template <typename Ready>
  Wake wait(int client, Clock::time_point deadline, Ready ready) {
    while (true) {
      if (ready()) return Wake::kReady;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Wake::kTimedOut;
      pollfd fds[2] = {{event_, POLLIN, 0}, {client, POLLRDHUP, 0}};
      const int n =
          ::poll(fds, client >= 0 ? 2 : 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (n < 0 && errno != EINTR)
        throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
      if (client >= 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
        return Wake::kClientGone;
      if (fds[0].revents & POLLIN) {
        uint64_t count;
        (void)!::read(event_, &count, sizeof count);
      }
    }
  }

 private:
  void notify() {
    const uint64_t one = 1;
    (void)!::write(event_, &one, sizeof one);
  }

  mutable std::mutex mutex_;
  int event_;
  std::optional<uint64_t> id_;
  std::string text_;
  std::optional<RequestResult> result_;
};

namespace {

std::atomic<uint64_t> g_next_response{1};

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

uint16_t port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return 0;
}

// The socket of the connection a handler serves. httplib 0.11 does not hand it to handlers;
// it is the one socket of this process whose two ends are the request's ports. -1 if none
// is found (then a client gone is seen only when a write fails).
int client_socket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2 || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_size = sizeof local, peer_size = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0) continue;
    if (local.ss_family != AF_INET && local.ss_family != AF_INET6) continue;
    if (port_of(local) != req.local_port) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0) continue;
    if (port_of(peer) != req.remote_port) continue;
    char address[INET6_ADDRSTRLEN] = "";
    const void* raw =
        peer.ss_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in&>(peer).sin_addr)
            : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr);
    inet_ntop(peer.ss_family, raw, address, sizeof address);
    if (req.remote_addr == address) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

void answer_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

void answer_error(httplib::Response& res, int status, const std::string& message,
                  const std::string& param = "", const std::string& code = "") {
  answer_json(res, status, error_body(status, message, param, code));
}

const std::set<std::string> kEndpoints = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
    "/detokenize"};

// Compares without stopping at the first difference (no timing hint about the key).
bool same_key(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i % std::max<size_t>(1, b.size())]);
  return diff == 0;
}

}  // namespace

int HttpServer::status_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadRequest: return 400;
    case ErrorKind::kOverloaded: return 429;
    case ErrorKind::kUnavailable: return 503;
    case ErrorKind::kCancelled: return 499;  // nginx's "client closed request": nobody reads it
    case ErrorKind::kNone:
    case ErrorKind::kInternal: break;
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

void HttpServer::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  CompletionRequest request =
      chat ? parse_chat_request(req.body, config_.generation, server_.max_images)
           : parse_completion_request(req.body, config_.generation);
  RequestSpec spec;
  spec.generation = request.generation;
  spec.generation.chat_template = "{prompt}";  // the prompt is rendered here, whole
  if (chat) {
    std::vector<ChatTurn> turns;
    for (const auto& message : request.messages) {
      ChatTurn turn;
      turn.role = message.role;
      turn.content_is_string = message.content_is_string;
      for (const auto& part : message.parts) {
        if (part.image) spec.image_bytes.push_back(fetch_image(part.url, part.param, server_));
        turn.parts.push_back({part.image, part.text});
      }
      turns.push_back(std::move(turn));
    }
    try {
      spec.prompt = chat_template_.render(turns, true);
    } catch (const RequestError& e) {
      throw ApiError(400, std::string("messages: ") + e.what(), "messages");
    }
  } else {
    spec.prompt = request.prompt;
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(g_next_response++);
  spec.client_id = id;
  const int images = static_cast<int>(spec.image_bytes.size());
  auto channel = std::make_shared<RequestChannel>();
  post([this, spec = std::move(spec), channel, images](Coordinator* coordinator) {
    if (!coordinator) {
      RequestResult refused;
      refused.error = "refused: the pipeline is shutting down";
      refused.error_kind = ErrorKind::kUnavailable;
      channel->finish(refused);
      return;
    }
    submitting_ = channel;
    const uint64_t request_id = coordinator->submit(spec);
    submitting_.reset();
    if (!channel->finished()) {
      open_[request_id] = channel;
      metrics_.on_submitted(request_id, images);
    }
    channel->accept(request_id);
  });

  const int client = client_socket(req);
  const auto deadline = Clock::now() + std::chrono::milliseconds(server_.request_timeout_ms);
  const auto timeout_text = "timed out after " + std::to_string(server_.request_timeout_ms / 1000) +
                            " s (server.request_timeout)";
  auto wake = channel->wait(client, deadline, [&] { return channel->accepted(); });
  if (wake != RequestChannel::Wake::kReady) {  // gone (or stuck) before the coordinator took it
    cancel(channel);
    throw ApiError(wake == RequestChannel::Wake::kTimedOut ? 500 : 499, timeout_text);
  }
  std::string text;
  std::optional<RequestResult> result;
  if (channel->finished()) {  // refused at once: an error status, not a stream
    channel->take(text, result);
    if (!result->ok) throw ApiError(status_for(result->error_kind), result->error);
  }
  const int64_t created = unix_now();
  if (!request.stream) {
    wake = channel->wait(client, deadline, [&] { return channel->finished(); });
    if (wake != RequestChannel::Wake::kReady) {
      cancel(channel);
      throw ApiError(wake == RequestChannel::Wake::kTimedOut ? 500 : 499, timeout_text);
    }
    channel->take(text, result);
    if (!result->ok) throw ApiError(status_for(result->error_kind), result->error);
    const Usage usage{result->prompt_tokens, static_cast<int>(result->tokens.size())};
    answer_json(res, 200,
                completion_body(chat, id, created, model_id_, result->text, result->finish, usage));
    return;
  }

  // Streaming: the role first, then text as it comes; the end, the usage, [DONE].
  struct Stream {
    std::shared_ptr<RequestChannel> channel;
    int client;
    bool chat, include_usage, started = false, ended = false;
    std::string id;
    int64_t created;
    Clock::time_point deadline;
  };
  auto stream = std::make_shared<Stream>(
      Stream{channel, client, chat, request.include_usage, false, false, id, created, deadline});
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, timeout_text](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& event) {
          return sink.write(event.data(), event.size());
        };
        auto end = [&] {
          stream->ended = true;
          send(sse_done());
          sink.done();
          return true;
        };
        if (!stream->started) {
          stream->started = true;
          if (stream->chat && !send(sse_event(chunk_body(true, stream->id, stream->created,
                                                         model_id_, "", true, "")))) {
            return false;  // the releaser cancels
          }
          return true;
        }
        const auto wake = stream->channel->wait(stream->client, stream->deadline,
                                                [&] { return stream->channel->has_news(); });
        if (wake == RequestChannel::Wake::kClientGone) return false;
        if (wake == RequestChannel::Wake::kTimedOut) {
          cancel(stream->channel);
          send(sse_event(error_body(500, timeout_text)));
          return end();
        }
        std::string text;
        std::optional<RequestResult> result;
        stream->channel->take(text, result);
        if (!text.empty() && !send(sse_event(chunk_body(stream->chat, stream->id, stream->created,
                                                        model_id_, text, false, "")))) {
          return false;
        }
        if (!result) return true;
        if (!result->ok) {
          send(sse_event(error_body(status_for(result->error_kind), result->error)));
          return end();
        }
        if (!send(sse_event(chunk_body(stream->chat, stream->id, stream->created, model_id_, "",
                                       false, result->finish.empty() ? "stop" : result->finish)))) {
          return false;
        }
        if (stream->include_usage) {
          const Usage usage{result->prompt_tokens, static_cast<int>(result->tokens.size())};
          send(sse_event(
              usage_chunk_body(stream->chat, stream->id, stream->created, model_id_, usage)));
        }
        return end();
      },
      [this, stream](bool success) {
        // Ended without its answer (client gone, write failed): cancel, free its KV slot.
        if (!stream->channel->finished()) cancel(stream->channel);
      });
}

void HttpServer::routes() {
  auto guarded = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        answer_error(res, e.status, e.what(), e.param, e.code);
      } catch (const std::exception& e) {
        const uint64_t n = g_next_response++;
        std::cerr << "llava-pipe: HTTP request " << n << " (" << req.method << " " << req.path
                  << "): " << e.what() << "\n";
        answer_error(res, 500,
                     "internal error (request " + std::to_string(n) + " in the server's log)");
      }
    };
  };
  // The coordinator's figures are read on its thread: post, wait for the answer.
  auto on_coordinator = [this](std::function<nlohmann::json(Coordinator*)> read) {
    auto promise = std::make_shared<std::promise<nlohmann::json>>();
    auto answer = promise->get_future();
    post([promise, read](Coordinator* c) { promise->set_value(read(c)); });
    if (answer.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      throw ApiError(503, "the coordinator did not answer within 10 s");
    }
    return answer.get();
  };

  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (server_.api_key.empty() || req.path == "/health" || req.path == "/metrics") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const std::string header = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (header.rfind(bearer, 0) != 0 || !same_key(header.substr(bearer.size()), server_.api_key)) {
      res.set_header("WWW-Authenticate", "Bearer");
      answer_error(res, 401,
                   header.empty() ? "missing API key (Authorization: Bearer KEY)" : "wrong API key",
                   "", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  http_->Post("/v1/chat/completions",
              guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(req, res, true);
              }));
  http_->Post("/v1/completions",
              guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(req, res, false);
              }));
  http_->Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
               answer_json(res, 200,
                           {{"object", "list"},
                            {"data",
                             {{{"id", model_id_},
                               {"object", "model"},
                               {"created", started_},
                               {"owned_by", "llava-pipe"}}}}});
             }));
  http_->Get("/health", guarded([on_coordinator](const httplib::Request&, httplib::Response& res) {
               const nlohmann::json health = on_coordinator([](Coordinator* c) -> nlohmann::json {
                 if (!c) return {{"status", 503}, {"reason", "shutting down"}};
                 const std::string why = c->unavailable_reason();
                 if (!why.empty()) return {{"status", 503}, {"reason", why}};
                 return {{"status", 200}, {"reason", "ok"}};
               });
               const int status = health["status"];
               answer_json(res, status,
                           {{"status", status == 200 ? "ok" : "unavailable"},
                            {"reason", health["reason"]}});
             }));
  http_->Get(
      "/metrics", guarded([this, on_coordinator](const httplib::Request&, httplib::Response& res) {
        on_coordinator([this](Coordinator* c) {
          if (c) metrics_.refresh(*c);
          return nlohmann::json();
        });
        res.set_content(metrics_.registry().render(), "text/plain; version=0.0.4; charset=utf-8");
      }));

  // vLLM's /tokenize and /detokenize: the coordinator's tokenizer, on its thread.
  http_->Post("/tokenize",
              guarded([on_coordinator](const httplib::Request& req, httplib::Response& res) {
                const auto body = nlohmann::json::parse(req.body, nullptr, false);
                if (!body.is_object() || !body.contains("prompt") || !body["prompt"].is_string()) {
                  throw ApiError(400, "prompt: expected a string", "prompt");
                }
                const bool special = body.value("add_special_tokens", true);
                const std::string prompt = body["prompt"];
                auto tokens = on_coordinator([&](Coordinator* c) -> nlohmann::json {
                  if (!c) return nullptr;
                  return c->tokenizer().encode(prompt, special);
                });
                if (tokens.is_null()) throw ApiError(503, "the server is shutting down");
                answer_json(res, 200, {{"tokens", tokens}, {"count", tokens.size()}});
              }));
  http_->Post(
      "/detokenize", guarded([on_coordinator](const httplib::Request& req, httplib::Response& res) {
        const auto body = nlohmann::json::parse(req.body, nullptr, false);
        if (!body.is_object() || !body.contains("tokens") || !body["tokens"].is_array()) {
          throw ApiError(400, "tokens: expected a list of token ids", "tokens");
        }
        std::vector<int32_t> ids;
        for (const auto& id : body["tokens"]) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
            throw ApiError(400, "tokens: " + json_text(id) + " is not a token id", "tokens");
          }
          ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
        auto text = on_coordinator([&](Coordinator* c) -> nlohmann::json {
          if (!c) return nullptr;
          for (int32_t id : ids) {
            if (id >= c->model().text.vocab_size) return {{"bad", id}};
          }
          return c->tokenizer().decode(ids);
        });
        if (text.is_null()) throw ApiError(503, "the server is shutting down");
        if (text.is_object()) {
          throw ApiError(400, "tokens: " + json_text(text["bad"]) + " is past the vocabulary",
                         "tokens");
        }
        answer_json(res, 200, {{"prompt", text}});
      }));

  // 404 for unknown paths, 405 for a known path with the wrong method; 413 from httplib's
  // body cap; every one in the OpenAI envelope.
  http_->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && kEndpoints.count(req.path)) res.status = 405;
    if (!res.body.empty()) return;
    if (res.status == 404)
      answer_error(res, 404, "no such endpoint: " + req.path);
    else if (res.status == 405)
      answer_error(res, 405, req.method + " is not allowed on " + req.path);
    else if (res.status == 413) {
      answer_error(res, 413,
                   "the request body is over server.max_body_bytes (" +
                       std::to_string(server_.max_body_bytes) + " bytes)");
    } else {
      answer_error(res, res.status, "HTTP error " + std::to_string(res.status));
    }
  });
  http_->set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.on_http_response(kEndpoints.count(req.path) ? req.path : "other", res.status);
  });
}

}  // namespace llava
