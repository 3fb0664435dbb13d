// The vision stage behind the worker's Stage interface: VisionTasks queue up, and each work
// step encodes a batch of them (up to batch_size images) into one Embeddings per task. A
// burst of tasks the coordinator announced is waited for, so that it is one batch.
#pragma once

#include <chrono>
#include <deque>
#include <memory>

#include "stages/checkpoint/checkpoint.h"
#include "stages/stage.h"
#include "stages/vision/vision_encoder.h"

namespace llava {

class VisionStage final : public Stage {
 public:
  VisionStage(const StageContext& context, StageSink& sink);

  void load() override;
  void unload() override;
  void offload() override;
  void take(wire::Incoming task) override;
  bool has_work() const override { return !queue_.empty(); }
  void work_step() override;  // one batch of queued tasks
  void cancel(uint64_t request) override;
  void drop_all(const std::optional<std::string>& reason) override;
  // The rest of an announced burst (zero once it is here, the batch is full, or none came
  // for kBurstGap).
  std::chrono::milliseconds wait_for_more() const override;

 private:
  using Clock = std::chrono::steady_clock;

  const StageContext context_;
  StageSink& sink_;
  std::unique_ptr<Checkpoint> checkpoint_;  // open from load to unload
  std::unique_ptr<VisionEncoder> encoder_;
  std::unique_ptr<WeightOffload> offload_;  // release: offload's host copy, from the first offload
  WeightOffload::Visit weights();
  struct Queued {
    wire::Incoming task;
    Clock::time_point arrived;
  };
  // Into the range of shared memory the task was offered, if it has one and they fit:
  // the frames then go as ranges. False: nothing written (the caller sends the bytes).
  bool write_shared(const wire::Incoming& task, const std::vector<at::Tensor>& images,
                    wire::Outgoing& out);
  SharedMemoryMaps shared_maps_;
  bool said_shared_failed_ = false;
  std::deque<Queued> queue_;          // tasks not started yet
  uint32_t burst_following_ = 0;      // tasks announced by the last one received
  Clock::time_point burst_deadline_;  // last one received + kBurstGap
};

}  // namespace llava
