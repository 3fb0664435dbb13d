// How the worker pool reaches its workers: messages to a registered worker, and the local
// worker processes (start, kill, reap). An interface, so that the pool and the scheduler
// run in a unit test against a fake that records what was sent and started; the real one
// sends through the coordinator's ROUTER socket and forks llava-stage.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "common/stage_kind.h"
#include "common/transport.h"
#include "common/wire.h"
#include "coordinator/worker_process.h"

namespace llava {

// The endpoint the workers connect to, expanded: {pid} is this process's id; {rundir} a
// new folder only this user can enter (`folder` gets its path, to be removed at the end),
// so that no other user can connect to an ipc socket file in it.
std::string expand_endpoint(std::string endpoint, std::string* folder);

class WorkerTransport {
 public:
  virtual ~WorkerTransport() = default;
  // To the worker registered with this routing id, without waiting: kBusy when its queue
  // is full, kGone when it is no longer connected.
  virtual SendResult send(const std::string& routing, wire::Outgoing& message) = 0;
  // Starts the worker process of this stage's replica; its pid. Throws when it cannot.
  virtual pid_t start(StageKind stage, int replica) = 0;
  virtual void kill(pid_t pid) = 0;              // at once; reaped later
  virtual std::optional<ExitStatus> reap() = 0;  // a child that has ended, if any
  virtual std::optional<ExitStatus> wait_exit(pid_t pid, std::chrono::milliseconds wait) = 0;
  virtual void stop(pid_t pid, std::chrono::milliseconds grace) = 0;  // then SIGKILL; reaped
  virtual const std::string& program() const = 0;  // what start runs (for messages)
};

// The real one: `program --config C --stage S --replica N --endpoint E`, with a random
// secret in the child's environment (variable `secret_variable`): a local worker's hello
// must present it, since its pid is visible to anyone (ps), the secret only to this user.
class RouterTransport : public WorkerTransport {
 public:
  RouterTransport(zmq::socket_t& router, std::string program, std::string config_path,
                  std::string endpoint, std::string secret_variable);
  const std::string& secret() const { return secret_; }
  SendResult send(const std::string& routing, wire::Outgoing& message) override;
  pid_t start(StageKind stage, int replica) override;
  void kill(pid_t pid) override;
  std::optional<ExitStatus> reap() override;
  std::optional<ExitStatus> wait_exit(pid_t pid, std::chrono::milliseconds wait) override;
  void stop(pid_t pid, std::chrono::milliseconds grace) override;
  const std::string& program() const override { return program_; }

 private:
  zmq::socket_t& router_;
  std::string program_, config_path_, endpoint_, secret_variable_, secret_;
};

}  // namespace llava
