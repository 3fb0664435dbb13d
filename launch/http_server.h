// `llava-pipe serve --http HOST:PORT`: the OpenAI-compatible HTTP front of a coordinator.
// Threads: httplib's handlers run on its pool (max_connections threads); the coordinator runs
// on the serve loop's thread. Handlers post commands (submit, cancel, read figures) to that
// thread, which runs them between coordinator turns; each request has a channel back (its
// text, its result) that wakes its handler through an eventfd, polled together with the
// client's socket, so that a client that goes away is seen at once and its request cancelled.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/config.h"
#include "coordinator/chat_template.h"
#include "coordinator/token_logprob.h"
#include "launch/metrics.h"
#include "launch/server_config.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace llava {

class Coordinator;
enum class ErrorKind;
struct RequestResult;
struct RequestSpec;
struct CompletionRequest;
class RequestChannel;

class HttpServer {
 public:
  HttpServer(const PipelineConfig& config, const ServerSection& server,
             const ChatTemplate& chat_template, std::string model_id, PipelineMetrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds HOST:PORT (throws ConfigError naming the address when it cannot) and starts
  // answering on a listener thread. Returns the port (useful with port 0).
  int start(const std::string& host, int port);
  // The same for /health and /metrics alone (`serve --probes`), on kProbeThreads threads
  // of their own: a probe is answered while the API's max_connections threads are all
  // taken (streams, slow uploads), so a busy server is not taken for a dead one.
  int start_probes(const std::string& host, int port);
  static constexpr int kProbeThreads = 4;
  void stop();

  // ---- the coordinator's thread
  // Runs the commands handlers posted. True if there were any.
  bool run_commands(Coordinator& coordinator);
  bool has_commands() const;
  // The coordinator's events for requests this server submitted: false if not one of them.
  bool on_text(uint64_t request, const std::string& text);
  void on_logprobs(uint64_t request, const std::vector<TokenLogprob>& logprobs);
  bool on_result(const RequestResult& result);
  // The loop has ended: every open request gets `why`, later commands find no coordinator.
  void close(const std::string& why);

  // Called (on a handler's thread) after each command is posted: wakes the coordinator.
  std::function<void()> on_command;

  // The HTTP status for a failed request's kind of error.
  static int status_for(ErrorKind kind);

 private:
  using Command = std::function<void(Coordinator*)>;
  void post(Command command);
  void routes();
  // /v1/chat/completions (chat) and /v1/completions: answered whole or streamed.
  void complete(const httplib::Request& req, httplib::Response& res, bool chat);
  // The coordinator's request for a parsed one: its images fetched (a chat's data: URIs
  // dropped once decoded), its chat rendered. ApiError (400) for what cannot be done.
  RequestSpec completion_spec(CompletionRequest& request, bool chat) const;
  // Posts the submission of the channel's choices, choice i with seed + i; the first
  // refused ends it (the channel then holds that failure). `decode_echo`: `echoed` is set
  // to the prompt ids' text on the coordinator's thread.
  void submit_choices(RequestSpec spec, const std::shared_ptr<RequestChannel>& channel,
                      const std::shared_ptr<std::string>& echoed, bool decode_echo);
  // Cancels every choice of the channel still running, saying why in the server's log.
  void cancel(const std::shared_ptr<RequestChannel>& channel,
              const std::string& why = "the HTTP client disconnected");
  std::string body_over_cap_message() const;  // a 413's

  PipelineConfig config_;
  ServerSection server_;
  const ChatTemplate& chat_template_;
  std::string model_id_;
  PipelineMetrics& metrics_;
  std::unique_ptr<httplib::Server> http_, probes_;
  std::thread listener_, probes_listener_;
  int64_t started_ = 0;  // unix seconds, the models' "created"

  mutable std::mutex commands_mutex_;
  std::deque<Command> commands_;
  bool closed_ = false;

  // The coordinator's thread only. Each open request's channel and its choice there.
  struct Open {
    std::shared_ptr<RequestChannel> channel;
    int choice = 0;
  };
  std::map<uint64_t, Open> open_;
  Open submitting_;  // gets a result given inside submit()
};

}  // namespace llava
