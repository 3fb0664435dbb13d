// The worker processes, one slot per process of the plan: starting them, their liveness,
// their deaths (backoff, the restart budget) and the lease each holds on its device. It
// knows no request: a worker holds request ids, and hands them back when it loses them.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/plan.h"
#include "common/stage_kind.h"
#include "common/wire.h"
#include "coordinator/clock.h"
#include "coordinator/worker_transport.h"

namespace llava {

// Tasks a worker may hold at once: the batch it works on and the next one.
constexpr size_t kBatchesInFlight = 2;
// From a process's start to its hello (loading a checkpoint comes later, under heartbeats).
constexpr auto kStartupGrace = std::chrono::seconds(60);
// Between a worker's death and its restart: 100 ms, doubled for each death in the restart
// window, at most 5 s.
constexpr auto kFirstBackoff = std::chrono::milliseconds(100);
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);
std::chrono::milliseconds restart_backoff(size_t deaths_in_window);

struct LeaseEvent {
  double seconds = 0;  // since the coordinator started
  std::string device;
  std::string process;  // "vision-0"
  std::string what;     // started, granted, released, exited, died
  std::string detail;
  // granted: how long the oldest request that needed this stage had waited for it (-1: none
  // waited, as at a concurrent start)
  double wait_seconds = -1;
};

struct StageReport {
  std::string process, device;
  double load_seconds = 0, work_seconds = 0;
  uint64_t peak_bytes = 0;
  int restarts = 0, leases = 0;
  // From the worker's last heartbeat: device memory reserved and allocated now, KV slots.
  uint64_t device_bytes = 0, allocated_bytes = 0;
  uint32_t kv_slots_used = 0, kv_slots = 0;
  size_t tasks = 0;  // requests sent to it and not answered
};

enum class WorkerState { kDown, kStarting, kReady };

// A worker's hold on its device, as the coordinator last told it.
enum class Lease {
  kNone,             // holds nothing: it may be granted the device
  kGranted,          // holds the device and takes tasks
  kReleasing,        // told to give it back and stay up (unload, offload); until LeaseReleased
  kReleasingToExit,  // told to give it back by exiting; until LeaseReleased
  kExiting,          // gave it back and is exiting: a clean exit is no death
};

struct WorkerSlot {
  StageKind stage = StageKind::kVision;
  std::string name, device;  // "vision-0", "cuda:0"
  int replica = 0;
  int batch_size = 1;
  bool external = false;  // started by a cluster manager: never started or killed here
  pid_t pid = -1;
  std::string routing;  // of the registered worker; "" when none is
  WorkerState state = WorkerState::kDown;
  Lease lease = Lease::kNone;
  uint64_t epoch = 0;        // of its last grant
  uint64_t incarnation = 0;  // of the registered worker process (its hello's)
  // The worker process (incarnation) that JSON tasks' token table went to: it keeps the
  // table, and later tasks to the same process go without it (~300 KB each).
  std::optional<uint64_t> token_table_sent_to;
  Clock::time_point last_seen, restart_after;
  Clock::time_point down_since;          // external: when it was last unregistered
  std::set<uint64_t> outstanding;        // requests sent to it and not answered
  std::deque<Clock::time_point> deaths;  // within coordinator.restart_window
  std::string last_death;                // why it last died
  StageReport report;

  size_t task_limit() const { return kBatchesInFlight * static_cast<size_t>(batch_size); }
  bool has_room() const { return outstanding.size() < task_limit(); }
  // Holds its device, possibly on the way to giving it back.
  bool granted() const {
    return lease == Lease::kGranted || lease == Lease::kReleasing ||
           lease == Lease::kReleasingToExit;
  }
  bool exit_expected() const {
    return lease == Lease::kReleasingToExit || lease == Lease::kExiting;
  }
};

// Requests a worker held when it lost them (it died, restarted, registered again); the
// caller requeues them.
struct LostTask {
  uint64_t request;
  std::string why;  // "vision-0 killed by signal 9"
};
using LostTasks = std::vector<LostTask>;

class WorkerPool {
 public:
  using EventFn = std::function<void(const LeaseEvent&)>;
  // One slot per planned process (their stage names parsed here, at the plan's edge).
  WorkerPool(const PipelineConfig& config, const std::vector<PlannedProcess>& processes,
             WorkerTransport& transport, ClockFn now, EventFn on_event);

  std::vector<WorkerSlot>& slots() { return slots_; }
  const std::vector<WorkerSlot>& slots() const { return slots_; }
  WorkerSlot& at(size_t index) { return slots_.at(index); }
  size_t index_of(const WorkerSlot& slot) const {
    return static_cast<size_t>(&slot - slots_.data());
  }
  WorkerSlot* by_routing(const std::string& routing);
  WorkerSlot* replica(StageKind stage, int replica);
  // The stage's first replica (sequential mode runs one of each).
  WorkerSlot* first(StageKind stage) { return replica(stage, 0); }

  // The request is the worker's until it answers, loses it, or the request ends.
  void assign(WorkerSlot& slot, uint64_t request) { slot.outstanding.insert(request); }
  void forget(int worker, uint64_t request);
  void forget(WorkerSlot& slot, uint64_t request) { slot.outstanding.erase(request); }

  // --- supervision
  // Down, local, its backoff over and within its restart budget.
  bool restart_due(WorkerSlot& slot);
  LostTasks start(WorkerSlot& slot);
  // Exited processes of ours: a clean exit that was asked for, or a death (or a fatal
  // error, when restarting cannot help).
  LostTasks reap();
  LostTasks check_liveness();
  // Every heartbeat interval (calls in between do nothing).
  LostTasks heartbeat();
  LostTasks worker_died(WorkerSlot& slot, const std::string& reason);
  // The slot's worker lost what it held (it died, exited, or registered again): its lease
  // is void and its requests are handed back.
  LostTasks take_back(WorkerSlot& slot, const std::string& reason);
  // Died more than max_restarts_per_minute times within the restart window (which slides:
  // the budget recovers as old deaths leave it). Why, in `why`.
  bool over_restart_budget(WorkerSlot& slot, std::string* why);
  // Every replica of the stage is over its budget, or external and unregistered for longer
  // than external_wait. Why, in `why`.
  bool stage_broken(StageKind stage, std::string* why);
  // Why the stage takes no work now ("" when a worker of it is loaded and granted).
  std::string why_not_serving(StageKind stage) const;
  // Every worker is external and gone: none that this coordinator could start again.
  bool none_left() const;
  // Silent for less than the liveness period.
  bool alive(const WorkerSlot& slot) const;
  void heard_from(WorkerSlot& slot) { slot.last_seen = now_(); }
  void registered(WorkerSlot& slot, const std::string& routing, uint64_t incarnation);
  // Its process ended (code, description); a usage error or a program that cannot run
  // is fatal().
  LostTasks exited(WorkerSlot& slot, const ExitStatus& status);

  // --- the lease
  bool device_free(const std::string& device) const;
  // `waited`: how long the oldest request needing this stage waited (for the timeline).
  bool grant(WorkerSlot& slot, double waited, LostTasks& lost);
  // Gives the device back as the stage's config says, or `how`.
  bool release(WorkerSlot& slot, std::optional<Release> how, LostTasks& lost);
  void released(WorkerSlot& slot);  // its LeaseReleased arrived

  // False when it was not sent: the worker is busy (its queue is full: try again later)
  // or gone (then its death is handled here, and what it held goes to `lost`).
  bool send(WorkerSlot& slot, wire::Outgoing& message, LostTasks& lost);

  // --- the end: take the leases back (workers report their load and work time and peak
  // memory with the release), then stop every process.
  LostTasks release_all();
  bool releasing() const;
  LostTasks stop_all();

  const std::string& fatal() const { return fatal_; }  // the workers cannot run at all
  void record(const WorkerSlot& slot, const std::string& what, const std::string& detail = "",
              double wait_seconds = -1);
  const std::vector<LeaseEvent>& timeline() const { return timeline_; }
  std::vector<StageReport> reports() const;
  pid_t pid_of(const std::string& process) const;

 private:
  const StageSection& section(StageKind stage) const {
    return stage == StageKind::kVision ? config_.vision : config_.language;
  }

  const PipelineConfig& config_;
  WorkerTransport& transport_;
  ClockFn now_;
  EventFn on_event_;
  std::chrono::milliseconds beat_interval_;
  std::vector<WorkerSlot> slots_;
  std::set<pid_t> killed_;  // killed by us after a death was declared: reaping is expected
  Clock::time_point started_, last_heartbeat_;
  std::string fatal_;
  std::vector<LeaseEvent> timeline_;
};

}  // namespace llava
