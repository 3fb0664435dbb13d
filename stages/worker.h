// A stage worker: one process, one stage (vision or language), one device. Its main loop
// reads like the protocol: poll -> on heartbeat / on lease / on task -> work -> reply.
// It places nothing on its device until it holds the device's lease; what the stage does
// with its tasks is behind stages/stage.h.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "common/config.h"
#include "common/model_config.h"
#include "common/rate_limited_log.h"
#include "common/stage_kind.h"
#include "common/transport.h"
#include "common/wire.h"
#include "stages/stage.h"

namespace llava {

struct WorkerOptions {
  std::string config_path;
  StageKind stage = StageKind::kVision;
  int replica = 0;
  std::string endpoint;  // the coordinator's ROUTER
};

// Sets a flag for the length of a scope: while it is set, the pulse thread sends the
// heartbeats the loop cannot.
class PulseWhile {
 public:
  explicit PulseWhile(std::atomic<bool>& flag) : flag_(flag) { flag_ = true; }
  ~PulseWhile() { flag_ = false; }
  PulseWhile(const PulseWhile&) = delete;
  PulseWhile& operator=(const PulseWhile&) = delete;

 private:
  std::atomic<bool>& flag_;
};

class Worker final : private StageSink {
 public:
  explicit Worker(WorkerOptions options);
  ~Worker() override;
  int run();  // the process's exit code
  // Async-signal-safe: SIGTERM's handler. The loop gives the device back and exits 0.
  static void request_stop();

 private:
  using Clock = std::chrono::steady_clock;
  enum class State { kReady, kLeased };

  void handle(wire::Incoming& message);
  void on_lease_grant(const schema::LeaseGrant::Reader& grant);
  void on_lease_release(schema::ReleaseHow how, uint64_t epoch);
  void unload();
  void hello();             // registers with the coordinator
  void lost_coordinator();  // external worker: drop the work, free the device, hello again
  void work();              // one step of the stage's work, timed

  // StageSink: what the stage says goes through here.
  bool send(wire::Outgoing& message) override;
  void fail(uint64_t request, uint32_t attempt, const std::string& message,
            FailureKind kind) override;
  void heartbeat_if_due() override;

  void send_heartbeat();  // from the loop or the pulse thread
  // The pulse thread's body: while a work step holds the loop (a long prefill, a big image
  // batch on the CPU), it sends the heartbeats the loop cannot, so that slow work is not
  // taken for a dead worker. It touches the socket only under socket_mutex_.
  void pulse();

  WorkerOptions options_;
  PipelineConfig config_;
  LlavaConfig model_;
  const StageSection& section_;  // config_.vision or config_.language
  at::Device device_;
  const StageContext stage_context_;
  wire::Limits limits_;
  // Embedding frames a language task carries as ranges of the coordinator's shared memory.
  SharedMemoryMaps shared_maps_;
  zmq::context_t context_;
  zmq::socket_t socket_;
  HandshakeWatch handshake_;  // a refused CURVE handshake is said at once
  std::mutex socket_mutex_;   // the loop and the pulse thread share the socket
  std::thread pulse_thread_;
  std::condition_variable pulse_wake_;
  std::mutex pulse_mutex_;
  bool pulse_stop_ = false;
  std::atomic<bool> working_{false};    // a work step holds the loop: the pulse beats
  const std::string secret_;            // from the coordinator that started us, if any
  const uint64_t incarnation_;          // random, for this process's life
  Clock::time_point hello_again_at_{};  // after a refused hello: when to try again

  std::atomic<State> state_{State::kReady};
  std::atomic<bool> registered_{false};              // the coordinator has answered our last hello
  int exit_code_ = -1;                               // >= 0: leave the loop with this code
  std::unique_ptr<Stage> stage_;                     // the one stage this process runs
  RateLimitedLog dropped_{"llava-stage: dropped "};  // malformed or misdirected messages

  // Read by the pulse thread too.
  std::atomic<double> load_seconds_{0}, work_seconds_{0};
  std::atomic<uint64_t> device_bytes_{0}, peak_device_bytes_{0}, allocated_bytes_{0};
  std::atomic<uint32_t> kv_slots_used_{0}, kv_slots_{0};  // set by the loop, read by the pulse
  Clock::time_point last_beat_sent_, last_heard_;
  std::chrono::milliseconds beat_interval_;
};

}  // namespace llava
