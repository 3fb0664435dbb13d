// A stage worker: one process, one stage (vision or language), one device. Its main loop
// reads like the protocol: poll -> on heartbeat / on lease / on task -> work -> reply.
// It places nothing on its device until it holds the device's lease.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "common/config.h"
#include "common/transport.h"
#include "common/model_config.h"
#include "common/rate_limited_log.h"
#include "common/wire.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/generator.h"
#include "stages/language/llama_decoder.h"
#include "stages/vision/vision_encoder.h"

namespace llava {

struct WorkerOptions {
  std::string config_path;
  std::string stage;  // "vision" or "language"
  int replica = 0;
  std::string endpoint;  // the coordinator's ROUTER
};

class Worker {
 public:
  explicit Worker(WorkerOptions options);
  ~Worker();
  int run();  // the process's exit code
  // Async-signal-safe: SIGTERM's handler. The loop gives the device back and exits 0.
  static void request_stop();

 private:
  using Clock = std::chrono::steady_clock;
  enum class State { kReady, kLeased };

  void handle(wire::Incoming& message);
  void on_lease_grant(const schema::LeaseGrant::Reader& grant);
  void on_lease_release(schema::ReleaseHow how, uint64_t epoch);
  void on_cancel(uint64_t request);
  void unload();
  void hello();             // registers with the coordinator
  void lost_coordinator();  // external worker: drop the work, free the device, hello again

  // How long to wait for the rest of a burst of vision tasks the coordinator announced
  // (zero once they are here, the batch is full, or none came for kBurstGap).
  std::chrono::milliseconds burst_wait() const;
  void work();
  void encode_images();    // vision: one batch of queued tasks
  void generate_tokens();  // language: admit queued tasks, one decode step
  void admit(wire::Incoming& task);
  void emit(const TokenEvent& event);

  bool send(wire::Outgoing& message);
  void heartbeat_if_due();
  void send_heartbeat();  // from the loop or the pulse thread
  // The pulse thread's body: while a work step holds the loop (a long prefill, a big image
  // batch on the CPU), it sends the heartbeats the loop cannot, so that slow work is not
  // taken for a dead worker. It touches the socket only under socket_mutex_.
  void pulse();
  // `bad_request`: the request's own fault (its image, its prompt), not the worker's.
  void fail(uint64_t request, uint32_t attempt, const std::string& message, bool retryable,
            bool bad_request = false);
  std::string who() const {  // "language-0 on cuda:0"
    return options_.stage + "-" + std::to_string(options_.replica) + " on " + device_.str();
  }

  WorkerOptions options_;
  PipelineConfig config_;
  LlavaConfig model_;
  const StageSection* stage_;
  schema::Stage stage_kind_;
  at::Device device_;
  at::TensorOptions tensor_options_;
  wire::Limits limits_;
  zmq::context_t context_;
  zmq::socket_t socket_;
  HandshakeWatch handshake_;  // a refused CURVE handshake is said at once
  std::mutex socket_mutex_;  // the loop and the pulse thread share the socket
  std::thread pulse_thread_;
  std::condition_variable pulse_wake_;
  std::mutex pulse_mutex_;
  bool pulse_stop_ = false;
  std::atomic<bool> working_{false};  // a work step holds the loop: the pulse beats
  const std::string secret_;           // from the coordinator that started us, if any
  const uint64_t incarnation_;         // random, for this process's life
  Clock::time_point hello_again_at_{};  // after a refused hello: when to try again

  std::atomic<State> state_{State::kReady};
  std::atomic<bool> registered_{false};  // the coordinator has answered our last hello
  int exit_code_ = -1;  // >= 0: leave the loop with this code
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<VisionEncoder> vision_;
  std::unique_ptr<LlamaDecoder> decoder_;
  std::unique_ptr<Generator> generator_;
  std::deque<wire::Incoming> queue_;  // tasks not started yet
  uint32_t burst_following_ = 0;      // vision tasks announced by the last one received
  Clock::time_point burst_deadline_;  // last one received + kBurstGap

  struct Running {  // a language request inside the generator
    uint32_t attempt;
    uint32_t first_index;  // index in the answer of this attempt's first token
    uint32_t prompt_tokens;
    uint32_t generated = 0;
    Clock::time_point started;
    double prefill_seconds = 0;
  };
  std::map<uint64_t, Running> running_;
  RateLimitedLog dropped_{"llava-stage: dropped "};  // malformed or misdirected messages
  int decode_steps_ = 0;  // this process's, for the fault hooks

  // Read by the pulse thread too.
  std::atomic<double> load_seconds_{0}, work_seconds_{0};
  std::atomic<uint64_t> device_bytes_{0}, peak_device_bytes_{0}, allocated_bytes_{0};
  std::atomic<uint32_t> kv_slots_used_{0}, kv_slots_{0};  // set by the loop, read by the pulse
  Clock::time_point last_beat_sent_, last_heard_;
  std::chrono::milliseconds beat_interval_;
};

}  // namespace llava
