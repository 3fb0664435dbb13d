// The worker pool: supervision (start, reap, liveness, death, backoff, restart budget)
// and the lease on each worker's device.
#include "coordinator/worker_pool.h"

#include <algorithm>
#include <stdexcept>

#include "common/errors.h"
#include "common/units.h"
#include "coordinator/tasks.h"

namespace llava {
namespace {

constexpr int kExitCannotRun = 127;  // the shell's code for a program exec could not run
// A process of ours whose socket is gone: how long to wait for its exit status, which
// names the cause better than "unreachable".
constexpr auto kUnreachableExitWait = std::chrono::milliseconds(200);
constexpr auto kStopGrace = std::chrono::milliseconds(2000);  // Shutdown, then SIGKILL

}  // namespace

std::chrono::milliseconds restart_backoff(size_t deaths_in_window) {
  constexpr size_t kDoublings = 6;  // 100 ms << 6 is past kMaxBackoff already
  const size_t doublings = std::min(deaths_in_window > 0 ? deaths_in_window - 1 : 0, kDoublings);
  return std::min<std::chrono::milliseconds>(kMaxBackoff,
                                             kFirstBackoff * (int64_t{1} << doublings));
}

WorkerPool::WorkerPool(const PipelineConfig& config, const std::vector<PlannedProcess>& processes,
                       WorkerTransport& transport, ClockFn now, EventFn on_event)
    : config_(config),
      transport_(transport),
      now_(std::move(now)),
      on_event_(std::move(on_event)),
      beat_interval_(config.coordinator.heartbeat_interval_ms),
      started_(now_()) {
  for (const PlannedProcess& process : processes) {
    const auto stage = parse_stage(process.stage);
    if (!stage) throw std::logic_error("the plan has a process of stage '" + process.stage + "'");
    WorkerSlot slot;
    slot.stage = *stage;
    slot.replica = process.replica;
    slot.name = process.name;
    slot.device = process.device;
    slot.batch_size = section(*stage).batch_size;
    slot.external = section(*stage).external;
    slot.down_since = started_;
    slot.report.process = slot.name;
    slot.report.device = slot.device;
    slots_.push_back(slot);
  }
}

WorkerSlot* WorkerPool::by_routing(const std::string& routing) {
  for (auto& slot : slots_) {
    if (!slot.routing.empty() && slot.routing == routing) return &slot;
  }
  return nullptr;
}

WorkerSlot* WorkerPool::replica(StageKind stage, int replica) {
  for (auto& slot : slots_) {
    if (slot.stage == stage && slot.replica == replica) return &slot;
  }
  return nullptr;
}

void WorkerPool::forget(int worker, uint64_t request) {
  if (worker >= 0) slots_.at(static_cast<size_t>(worker)).outstanding.erase(request);
}

// ---------------------------------------------------------------- supervision --------

bool WorkerPool::restart_due(WorkerSlot& slot) {
  std::string why;
  return slot.state == WorkerState::kDown && !slot.external && now_() >= slot.restart_after &&
         !over_restart_budget(slot, &why);
}

LostTasks WorkerPool::start(WorkerSlot& slot) {
  slot.pid = transport_.start(slot.stage, slot.replica);
  slot.state = WorkerState::kStarting;
  LostTasks lost = take_back(slot, "restarted");
  slot.last_seen = now_();
  record(slot, "started", "pid " + std::to_string(slot.pid));
  return lost;
}

LostTasks WorkerPool::reap() {
  LostTasks lost;
  while (auto status = transport_.reap()) {
    if (killed_.erase(status->pid)) continue;  // its death was already handled
    for (auto& slot : slots_) {
      if (slot.pid != status->pid) continue;
      LostTasks more = exited(slot, *status);
      lost.insert(lost.end(), more.begin(), more.end());
    }
  }
  return lost;
}

LostTasks WorkerPool::exited(WorkerSlot& slot, const ExitStatus& status) {
  if (slot.exit_expected() && status.code == 0) {
    slot.pid = -1;
    slot.state = WorkerState::kDown;
    LostTasks lost = take_back(slot, "exited");
    record(slot, "exited");
    return lost;
  }
  if (status.code == kExitUsage) {
    fatal_ = slot.name + " " + status.description + ": its command line or config was refused";
  } else if (status.code == kExitCannotRun) {  // restarting cannot help
    fatal_ = slot.name + ": cannot start the worker program " + transport_.program();
  } else {
    slot.pid = -1;  // already gone: nothing to kill
    return worker_died(slot, status.description);
  }
  return {};
}

LostTasks WorkerPool::check_liveness() {
  const auto now = now_();
  const auto limit = beat_interval_ * config_.coordinator.liveness;
  LostTasks lost;
  for (auto& slot : slots_) {
    if (slot.state == WorkerState::kDown) continue;
    const auto silent = now - slot.last_seen;
    if (slot.state == WorkerState::kStarting ? silent > kStartupGrace : silent > limit) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(silent).count();
      LostTasks more = worker_died(slot, "no heartbeat for " + std::to_string(ms) + " ms");
      lost.insert(lost.end(), more.begin(), more.end());
    }
  }
  return lost;
}

LostTasks WorkerPool::heartbeat() {
  LostTasks lost;
  if (now_() - last_heartbeat_ < beat_interval_) return lost;
  last_heartbeat_ = now_();
  for (auto& slot : slots_) {
    if (slot.routing.empty() || slot.state == WorkerState::kDown || slot.exit_expected()) continue;
    send(slot, *heartbeat_message(), lost);
  }
  return lost;
}

LostTasks WorkerPool::worker_died(WorkerSlot& slot, const std::string& reason) {
  record(slot, "died", reason);
  if (slot.pid > 0) {
    transport_.kill(slot.pid);  // a stalled process must not come back with stale replies
    killed_.insert(slot.pid);
  }
  slot.pid = -1;
  slot.state = WorkerState::kDown;
  const auto now = now_();
  slot.down_since = now;
  LostTasks lost = take_back(slot, reason);
  slot.deaths.push_back(now);
  slot.last_death = reason;
  ++slot.report.restarts;
  slot.restart_after = now + restart_backoff(slot.deaths.size());
  return lost;
}

LostTasks WorkerPool::take_back(WorkerSlot& slot, const std::string& reason) {
  slot.routing.clear();
  slot.lease = Lease::kNone;
  LostTasks lost;
  for (uint64_t id : slot.outstanding) lost.push_back({id, slot.name + " " + reason});
  slot.outstanding.clear();
  return lost;
}

bool WorkerPool::over_restart_budget(WorkerSlot& slot, std::string* why) {
  // An external slot never is: its worker may come back at any time, and its requests wait
  // for it or for another replica (up to coordinator.external_wait).
  if (slot.external) return false;
  const auto window = std::chrono::milliseconds(config_.coordinator.restart_window_ms);
  const auto now = now_();
  while (!slot.deaths.empty() && now - slot.deaths.front() > window) slot.deaths.pop_front();
  const int budget = config_.coordinator.max_restarts_per_minute;
  if (static_cast<int>(slot.deaths.size()) <= budget) return false;
  *why = slot.name + " failed " + std::to_string(slot.deaths.size()) + " times in " +
         format_millis(static_cast<int64_t>(config_.coordinator.restart_window_ms)) +
         " (last: " + slot.last_death + "); it is started again once fewer than " +
         std::to_string(budget + 1) +
         " failures fall in that window (coordinator.max_restarts_per_minute, restart_window)";
  return true;
}

bool WorkerPool::stage_broken(StageKind stage, std::string* why) {
  const auto wait = std::chrono::milliseconds(config_.coordinator.external_wait_ms);
  const auto now = now_();
  for (auto& slot : slots_) {
    if (slot.stage != stage || over_restart_budget(slot, why)) continue;
    if (!(slot.external && slot.state == WorkerState::kDown && wait.count() > 0 &&
          now - slot.down_since > wait)) {
      return false;
    }
    *why = "no worker registered as " + slot.name + " for " + format_millis(wait.count()) +
           " (launch: external: a cluster manager must start `llava-stage --stage " +
           stage_name(slot.stage) + " --replica " + std::to_string(slot.replica) +
           "`; coordinator.external_wait)";
  }
  return true;
}

std::string WorkerPool::why_not_serving(StageKind stage) const {
  const WorkerSlot* dead = nullptr;
  for (const auto& slot : slots_) {
    if (slot.stage != stage) continue;
    // Loaded: granted, and a heartbeat since has counted its load time.
    if (slot.state == WorkerState::kReady && slot.granted() && slot.report.load_seconds > 0)
      return "";
    if (slot.state == WorkerState::kDown && !slot.last_death.empty()) dead = &slot;
  }
  const std::string name = stage_name(stage);
  if (dead) {
    return name + " stage: no live worker (" + dead->name + " died: " + dead->last_death +
           "; it is being restarted)";
  }
  return "loading: the " + name + " stage's worker is starting or loading its weights";
}

bool WorkerPool::none_left() const {
  return std::all_of(slots_.begin(), slots_.end(), [](const WorkerSlot& slot) {
    return slot.external && slot.state == WorkerState::kDown;
  });
}

bool WorkerPool::alive(const WorkerSlot& slot) const {
  return slot.state == WorkerState::kReady &&
         now_() - slot.last_seen <= beat_interval_ * config_.coordinator.liveness;
}

void WorkerPool::registered(WorkerSlot& slot, const std::string& routing, uint64_t incarnation) {
  slot.routing = routing;
  slot.incarnation = incarnation;
  slot.state = WorkerState::kReady;
  slot.last_seen = now_();
}

// ---------------------------------------------------------------- the lease ----------

bool WorkerPool::device_free(const std::string& device) const {
  return std::none_of(slots_.begin(), slots_.end(), [&](const WorkerSlot& slot) {
    return slot.device == device && slot.lease != Lease::kNone;
  });
}

bool WorkerPool::grant(WorkerSlot& slot, double waited, LostTasks& lost) {
  if (!send(slot, *lease_grant(slot.device, section(slot.stage).memory_limit, ++slot.epoch),
            lost)) {
    return false;
  }
  slot.lease = Lease::kGranted;
  ++slot.report.leases;
  record(slot, "granted", "", waited);
  return true;
}

bool WorkerPool::release(WorkerSlot& slot, std::optional<Release> how, LostTasks& lost) {
  const Release way = how.value_or(section(slot.stage).release);
  if (!send(slot, *lease_release(way, slot.epoch), lost)) return false;
  slot.lease = release_exits(way) ? Lease::kReleasingToExit : Lease::kReleasing;
  return true;
}

void WorkerPool::released(WorkerSlot& slot) {
  slot.lease = slot.exit_expected() ? Lease::kExiting : Lease::kNone;
  record(slot, "released");
}

bool WorkerPool::send(WorkerSlot& slot, wire::Outgoing& message, LostTasks& lost) {
  const SendResult result = transport_.send(slot.routing, message);
  if (result == SendResult::kSent) return true;
  // A full queue to a live worker means "not now": the caller tries again on a later pass
  // (the task limit keeps tasks far below the queue's bound; heartbeats may wait).
  if (result == SendResult::kBusy) return false;
  // A worker told to exit is expected to become unreachable; its exit is reaped.
  if (slot.exit_expected()) return false;
  LostTasks more;
  // A process of ours whose socket is gone is most likely ending (the kernel closes its
  // files before it can be reaped): its exit status names the cause better.
  std::optional<ExitStatus> status;
  if (slot.pid > 0) status = transport_.wait_exit(slot.pid, kUnreachableExitWait);
  more = status ? exited(slot, *status) : worker_died(slot, "unreachable");
  lost.insert(lost.end(), more.begin(), more.end());
  return false;
}

// ---------------------------------------------------------------- the end ------------

LostTasks WorkerPool::release_all() {
  LostTasks lost;
  for (auto& slot : slots_) {
    // External workers stay up for the next coordinator: they only give the device back.
    if (slot.lease == Lease::kGranted && !slot.routing.empty()) {
      release(slot, slot.external ? Release::kUnload : Release::kExit, lost);
    }
  }
  return lost;
}

bool WorkerPool::releasing() const {
  return std::any_of(slots_.begin(), slots_.end(), [](const WorkerSlot& slot) {
    return slot.lease == Lease::kReleasing || slot.lease == Lease::kReleasingToExit;
  });
}

LostTasks WorkerPool::stop_all() {
  LostTasks lost;
  for (auto& slot : slots_) {
    if (slot.pid > 0 && !slot.routing.empty()) {
      send(slot, *shutdown_message("coordinator shutting down"), lost);
    }
  }
  for (auto& slot : slots_) {
    if (slot.pid <= 0) continue;
    transport_.stop(slot.pid, kStopGrace);
    slot.pid = -1;
    slot.state = WorkerState::kDown;
  }
  for (pid_t pid : killed_) transport_.stop(pid, std::chrono::milliseconds(0));
  killed_.clear();
  return lost;
}

// ---------------------------------------------------------------- reports ------------

void WorkerPool::record(const WorkerSlot& slot, const std::string& what, const std::string& detail,
                        double wait_seconds) {
  LeaseEvent event{std::chrono::duration<double>(now_() - started_).count(),
                   slot.device,
                   slot.name,
                   what,
                   detail,
                   wait_seconds};
  timeline_.push_back(event);
  if (on_event_) on_event_(event);
}

std::vector<StageReport> WorkerPool::reports() const {
  std::vector<StageReport> out;
  for (const auto& slot : slots_) {
    out.push_back(slot.report);
    out.back().tasks = slot.outstanding.size();
  }
  return out;
}

pid_t WorkerPool::pid_of(const std::string& process) const {
  for (const auto& slot : slots_) {
    if (slot.name == process) return slot.pid;
  }
  return -1;
}

}  // namespace llava
