// The one interface between the worker's loop and what a stage does with its tasks: the
// vision stage turns images into embeddings, the language stage prompts into tokens. The
// loop owns the socket and the lease; a stage owns its model and its tasks, and answers
// through the StageSink the worker gives it.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>

#include "common/config.h"
#include "common/model_config.h"
#include "common/stage_kind.h"
#include "common/wire.h"
#include "stages/weight_offload.h"

namespace llava {

// How the coordinator should take a failed request.
enum class FailureKind {
  kRetryable,       // the worker's circumstances (a lease released, a broken batch): run it again
  kFinal,           // this worker cannot do it (out of memory): running it again would not help
  kBadRequest,      // the request's own fault (its image, its prompt)
  kNoSharedMemory,  // its frames are in shared memory this worker cannot read: send bytes
};

// What a stage may say, all of it through the worker: the socket is shared with the
// pulse thread, and only the worker knows when a heartbeat is due.
class StageSink {
 public:
  virtual ~StageSink() = default;
  virtual bool send(wire::Outgoing& message) = 0;
  virtual void fail(uint64_t request, uint32_t attempt, const std::string& message,
                    FailureKind kind) = 0;
  // Work that holds the loop for long (loading a checkpoint) calls this as it goes.
  virtual void heartbeat_if_due() = 0;
};

// What a stage is given once, for the process's life; the references outlive it.
struct StageContext {
  StageKind kind;
  const PipelineConfig& config;
  const LlavaConfig& model;
  const StageSection& section;       // config.vision or config.language
  at::TensorOptions tensor_options;  // the weights' dtype, on this worker's device
  std::string who;                   // "language-0 on cuda:0", for messages
};

// KV cache slots, for the heartbeat (only the language stage has any).
struct SlotUse {
  uint32_t used = 0;
  uint32_t total = 0;
};

class Stage {
 public:
  virtual ~Stage() = default;

  // The lease. `load` reads the checkpoint and builds the model on the device, which the
  // worker has made current and capped; it throws when it cannot (the worker says why and
  // exits). `unload` frees what load built (the worker then gives the allocator's cached
  // blocks back). `offload` (release: offload) keeps the weights in host memory, pinned on
  // a GPU, and frees the device; the next `load` copies them back in one transfer instead
  // of reading the checkpoint.
  virtual void load() = 0;
  virtual void unload() = 0;
  virtual void offload() = 0;

  // Tasks. `take` queues a task of this stage's kind (throws WireError for any other);
  // `work_step` does one step short enough for a heartbeat between steps, and answers
  // through the sink; `cancel` forgets a request without answering it.
  virtual void take(wire::Incoming task) = 0;
  virtual bool has_work() const = 0;
  virtual void work_step() = 0;
  virtual void cancel(uint64_t request) = 0;
  // Every task, queued or running, leaves the stage. With a reason each one is failed back
  // to the coordinator (retryable: it requeues them); without one nothing is said (the
  // coordinator is gone, and whichever answers next requeues them).
  virtual void drop_all(const std::optional<std::string>& reason) = 0;

  // How long the loop may still wait for messages before working: more of a burst of
  // tasks the coordinator announced, to be done as one batch. Zero: work now.
  virtual std::chrono::milliseconds wait_for_more() const { return std::chrono::milliseconds(0); }
  virtual SlotUse slots() const { return {}; }
};

// The stage of `context.kind`. Builds nothing on the device (load does).
std::unique_ptr<Stage> make_stage(const StageContext& context, StageSink& sink);

// An error as one line a user can act on (an out-of-memory names what was being done, the
// allocation, the memory_limit and the knobs that lower it).
std::string one_line_error(const std::exception& e, const StageContext& context,
                           const std::string& doing);
// An error after which the CUDA context is unusable: the process must end and be restarted.
bool is_sticky(const std::exception& e);
[[noreturn]] void exit_after_sticky_error(const std::exception& e);

// The timed, logged halves of release: offload ("language-0 on cuda:0: 12.55 GiB of weights
// back on the device in 0.27 s, 46.5 GB/s"): a user sees what a swap costs.
void offload_weights(WeightOffload& offload, const WeightOffload::Visit& visit, const StageContext& context);
void restore_weights(WeightOffload& offload, const WeightOffload::Visit& visit, const StageContext& context);

inline double seconds(std::chrono::steady_clock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

}  // namespace llava
