// A stage worker: one process, one stage (vision or language), one device. Its main loop
// reads like the protocol: poll -> on heartbeat / on lease / on task -> work -> reply.
// It places nothing on its device until it holds the device's lease.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <zmq.hpp>

#include "common/config.h"
#include "common/model_config.h"
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
  int run();  // the process's exit code

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
  void fail(uint64_t request, uint32_t attempt, const std::string& message, bool retryable);

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

  State state_ = State::kReady;
  bool registered_ = false;  // the coordinator has answered our last hello
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

  double load_seconds_ = 0, work_seconds_ = 0;
  Clock::time_point last_beat_sent_, last_heard_;
  std::chrono::milliseconds beat_interval_;
};

}  // namespace llava
