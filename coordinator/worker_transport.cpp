// The worker transport of a real pipeline: the coordinator's ROUTER socket (and its
// endpoint's private folder) and fork/exec'd llava-stage processes.
#include "coordinator/worker_transport.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "common/errors.h"

namespace llava {

namespace {

std::string random_secret() {
  std::random_device device;
  std::string secret;
  for (int i = 0; i < 4; ++i) {
    char part[9];
    std::snprintf(part, sizeof part, "%08x", device());
    secret += part;
  }
  return secret;
}

}  // namespace

std::string expand_endpoint(std::string endpoint, std::string* folder) {
  auto at = endpoint.find("{pid}");
  if (at != std::string::npos) endpoint.replace(at, 5, std::to_string(getpid()));
  at = endpoint.find("{rundir}");
  if (at != std::string::npos) {
    const char* base = std::getenv("XDG_RUNTIME_DIR");
    if (!base || access(base, W_OK) != 0) base = std::getenv("TMPDIR");
    if (!base || access(base, W_OK) != 0) base = "/tmp";
    std::string pattern = std::string(base) + "/llava-pipe-XXXXXX";
    if (!mkdtemp(pattern.data())) {  // mkdtemp makes it 0700
      throw TransportError(std::string("cannot make a private folder for the endpoint in ") + base +
                           ": " + std::strerror(errno));
    }
    *folder = pattern;
    endpoint.replace(at, 8, pattern);
  }
  return endpoint;
}

RouterTransport::RouterTransport(zmq::socket_t& router, std::string program,
                                 std::string config_path, std::string endpoint,
                                 std::string secret_variable)
    : router_(router),
      program_(std::move(program)),
      config_path_(std::move(config_path)),
      endpoint_(std::move(endpoint)),
      secret_variable_(std::move(secret_variable)),
      secret_(random_secret()) {}

SendResult RouterTransport::send(const std::string& routing, wire::Outgoing& message) {
  zmq::message_t id(routing.data(), routing.size());
  return try_send_parts(router_, message.parts(), &id);
}

pid_t RouterTransport::start(StageKind stage, int replica) {
  return start_process(program_,
                       {"--config", config_path_, "--stage", stage_name(stage), "--replica",
                        std::to_string(replica), "--endpoint", endpoint_},
                       {secret_variable_ + "=" + secret_});
}

void RouterTransport::kill(pid_t pid) {
  ::kill(pid, SIGKILL);
}

std::optional<ExitStatus> RouterTransport::reap() {
  return reap_any();
}

std::optional<ExitStatus> RouterTransport::wait_exit(pid_t pid, std::chrono::milliseconds wait) {
  return llava::wait_exit(pid, static_cast<int>(wait.count()));
}

void RouterTransport::stop(pid_t pid, std::chrono::milliseconds grace) {
  stop_process(pid, static_cast<int>(grace.count()));
}

}  // namespace llava
