// Which request goes to which worker, and when a stage holds its device: sequential turns
// with lazy leases, concurrent dispatch balanced over replicas, vision bursts, twin images
// (encoded once for every request that has them) and the embedding cache's take-over.
// The one room where requests meet workers: a request leaves its worker through here.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/config.h"
#include "common/stage_kind.h"
#include "common/wire.h"
#include "coordinator/clock.h"
#include "coordinator/embedding_store.h"
#include "coordinator/request_table.h"
#include "coordinator/shared_embeddings.h"
#include "coordinator/worker_pool.h"

namespace llava {

class Scheduler {
 public:
  // `eos_token_ids`: the model's, added to every language task's stop tokens. `shared`
  // (optional): embeddings through shared memory with the workers that see it.
  Scheduler(const PipelineConfig& config, std::vector<int64_t> eos_token_ids,
            RequestTable& requests, WorkerPool& workers, EmbeddingCache& cache, ClockFn now,
            SharedEmbeddings* shared = nullptr);

  // One pass: fails the requests of a stage that keeps dying, finishes those complete,
  // then (by the config's mode) starts workers, grants and releases leases, dispatches.
  void schedule();

  // --- a request leaving its worker (the table and the pool kept in step)
  void finish(Request& request, const std::string& error, const std::string& reason = "",
              ErrorKind kind = ErrorKind::kNone);
  void requeue(Request& request, const std::string& why, bool counted = true);
  void requeue(const LostTasks& lost);
  // Tells the worker holding it (if any) to drop it, then answers it "cancelled".
  void cancel(Request& request, const std::string& why);
  // Tells the worker holding the request (if any) to drop it and free what it holds.
  void cancel_at_worker(const Request& request);
  void fail_all(const std::string& error);
  // The cache take-over: every image of a request bound for the vision stage is in the
  // embedding cache, so it waits for the language stage now. True if it did.
  bool take_from_cache(Request& request);
  // Through the pool; the requests of a worker found dead on the way are requeued.
  bool send(WorkerSlot& slot, wire::Outgoing& message);

  // Sequential mode: the stage whose turn it is on the device (none between turns), and
  // whether it is giving the device back for the other stage's work.
  std::optional<StageKind> holder() const { return holder_; }
  bool giving_way() const { return giving_way_; }

 private:
  // A pass's vision tasks: sent together at its end (send_burst), each saying how many
  // more follow it to the same worker, so that the worker encodes them as one batch.
  struct BurstTask {
    size_t worker;
    uint64_t request;
    std::unique_ptr<wire::Outgoing> message;
  };
  // Per stage: the requests that need it, those of them no worker has yet, and how long
  // the oldest of those has waited for it.
  struct Demand {
    size_t total = 0, waiting = 0;
    Clock::duration oldest{0};
  };

  void fail_broken_stages();
  void finish_complete();
  void schedule_sequential();
  void schedule_concurrent();
  void take_over_cached();
  // One of its images is being encoded for another request (`encoding`): its embeddings
  // will be in the cache, so the request waits for them rather than encode it again.
  bool twin_in_vision(const Request& request,
                      const std::unordered_multiset<size_t>& encoding) const;
  // Sends the request to the worker (a vision task joins `burst`, its images `encoding`).
  // False when it was not sent (the worker is busy or gone).
  bool dispatch(WorkerSlot& slot, Request& request, std::unordered_multiset<size_t>& encoding,
                std::vector<BurstTask>& burst);
  void send_burst(std::vector<BurstTask>& burst);
  // A range of shared memory for this vision task's embeddings, if its worker sees ours.
  void offer_shared_memory(size_t worker, wire::Outgoing& task);
  void grant(WorkerSlot& slot);
  void release(WorkerSlot& slot);
  // Sequential: the holder has work of its own but gives way to the other stage's.
  bool should_give_way(StageKind turn, const Demand& own, const Demand& other) const;

  const PipelineConfig& config_;
  std::vector<int64_t> eos_token_ids_;
  RequestTable& requests_;
  WorkerPool& workers_;
  EmbeddingCache& cache_;
  ClockFn now_;
  SharedEmbeddings* shared_;
  std::optional<StageKind> holder_;  // sequential: the stage holding the device
  bool giving_way_ = false;     // sequential: the holder was released for the other stage's work
  size_t turn_dispatched_ = 0;  // sequential: tasks the holder was sent since its grant
};

}  // namespace llava
