// The scheduler: sequential turns with lazy leases, concurrent dispatch, vision bursts,
// twin images and the cache take-over.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <map>

#include "common/errors.h"
#include "coordinator/tasks.h"

namespace llava {

Scheduler::Scheduler(const PipelineConfig& config, std::vector<int64_t> eos_token_ids,
                     RequestTable& requests, WorkerPool& workers, EmbeddingCache& cache,
                     ClockFn now, SharedEmbeddings* shared)
    : config_(config),
      eos_token_ids_(std::move(eos_token_ids)),
      requests_(requests),
      workers_(workers),
      cache_(cache),
      now_(std::move(now)),
      shared_(shared) {}

// ---------------------------------------------------------------- requests -----------

void Scheduler::finish(Request& request, const std::string& error, const std::string& reason,
                       ErrorKind kind) {
  workers_.forget(request.worker, request.id);
  requests_.finish(request, error, reason, kind);
}

void Scheduler::requeue(Request& request, const std::string& why, bool counted) {
  workers_.forget(request.worker, request.id);
  requests_.requeue(request, why, counted);
}

void Scheduler::requeue(const LostTasks& lost) {
  for (const LostTask& task : lost) {
    if (Request* request = requests_.find(task.request)) requeue(*request, task.why);
  }
}

void Scheduler::cancel(Request& request, const std::string& why) {
  cancel_at_worker(request);
  finish(request, why, "cancelled", ErrorKind::kCancelled);
}

void Scheduler::cancel_at_worker(const Request& request) {
  if (request.worker < 0) return;
  WorkerSlot& slot = workers_.at(static_cast<size_t>(request.worker));
  if (!slot.routing.empty()) send(slot, *cancel_task(request));
}

void Scheduler::fail_all(const std::string& error) {
  while (!requests_.empty())
    finish(requests_.all().begin()->second, error, "", ErrorKind::kUnavailable);
}

bool Scheduler::take_from_cache(Request& request) {
  if (request.progress != Progress::kNeedVision || !cache_.enabled()) return false;
  auto frames = cache_.find(request.images, request.image_hashes);
  if (!frames) return false;
  try {
    requests_.put_embeddings(request, std::move(*frames));
  } catch (const RequestError&) {
    return false;  // cannot keep them now (a failed spill): the vision stage says so
  }
  request.cached_images = static_cast<int>(request.images.size());
  return true;
}

void Scheduler::take_over_cached() {
  for (auto& [id, request] : requests_.all()) take_from_cache(request);
}

bool Scheduler::twin_in_vision(const Request& request,
                               const std::unordered_multiset<size_t>& encoding) const {
  return cache_.enabled() && std::any_of(request.image_hashes.begin(), request.image_hashes.end(),
                                         [&](size_t hash) { return encoding.count(hash) > 0; });
}

bool Scheduler::send(WorkerSlot& slot, wire::Outgoing& message) {
  LostTasks lost;
  const bool sent = workers_.send(slot, message, lost);
  requeue(lost);
  return sent;
}

// ---------------------------------------------------------------- dispatch -----------

bool Scheduler::dispatch(WorkerSlot& slot, Request& request,
                         std::unordered_multiset<size_t>& encoding, std::vector<BurstTask>& burst) {
  const size_t worker = workers_.index_of(slot);
  const bool vision = request.progress == Progress::kNeedVision;
  if (vision) {
    encoding.insert(request.image_hashes.begin(), request.image_hashes.end());
    // Sent at the pass's end; counted as the worker's now, so that the pass balances
    // replicas with it.
    burst.push_back({worker, request.id, vision_task(request)});
  } else {
    auto embeddings =
        request.images.empty() ? std::vector<wire::Frame>{} : requests_.embeddings(request.id);
    const bool ranges = shared_ && shared_->sees_ours(worker) &&
                        std::any_of(embeddings.begin(), embeddings.end(),
                                    [](const wire::Frame& f) { return f.shared != nullptr; });
    // A JSON task's token table goes once to each worker process.
    const bool json = request.spec.generation.json_object;
    const bool table = json && slot.token_table_sent_to != slot.incarnation;
    auto task = language_task(request, std::move(embeddings), eos_token_ids_, table);
    if (ranges) task->send_shared_as_ranges();
    // Stamped before sending: the worker may take the task up, prefill and answer before
    // send() returns to this thread (a busy 2-core machine), and its prefill must lie
    // within the language part that starts here.
    const auto sending = now_();
    if (!send(slot, *task)) return false;
    if (table) slot.token_table_sent_to = slot.incarnation;
    if (ranges) shared_->sent_as_ranges();
    if (!request.handed_off) request.handed_off = sending;
  }
  request.progress = vision ? Progress::kInVision : Progress::kInLanguage;
  request.worker = static_cast<int>(worker);
  const auto now = now_();
  if (!request.dispatched) request.dispatched = now;
  workers_.assign(slot, request.id);
  return true;
}

void Scheduler::send_burst(std::vector<BurstTask>& burst) {
  std::map<size_t, uint32_t> remaining;
  for (const auto& task : burst) ++remaining[task.worker];
  for (auto& task : burst) {
    WorkerSlot& slot = workers_.at(task.worker);
    const uint32_t follow = --remaining[task.worker];
    // A worker that died while this burst went out had its requests requeued.
    if (slot.routing.empty() || !slot.outstanding.count(task.request)) continue;
    task.message->header().getBody().getVisionTask().setFollowedBy(follow);
    if (shared_) offer_shared_memory(task.worker, *task.message);
    if (send(slot, *task.message) || slot.routing.empty()) continue;
    // Busy (its queue is full): the request waits for a later pass, as if never sent.
    workers_.forget(static_cast<int>(task.worker), task.request);
    if (Request* request = requests_.find(task.request)) {
      request->progress = Progress::kNeedVision;
      request->worker = -1;
    }
  }
  burst.clear();
}

void Scheduler::offer_shared_memory(size_t worker, wire::Outgoing& task) {
  const Request* request = requests_.find(task.header().getRequestId());
  if (!request) return;
  auto waiting = [this](uint64_t id, uint32_t attempt) {
    const Request* r = requests_.find(id, attempt);
    return r && r->progress == Progress::kInVision;
  };
  // The cache's frames hold their ranges: copied out of them, they let tasks have them.
  auto make_room = [this] { cache_.copy_out_of_shared_memory(); };
  shared_->offer(worker, task, static_cast<uint32_t>(request->images.size()), waiting, make_room);
}

void Scheduler::grant(WorkerSlot& slot) {
  // The lease's wait: since the oldest request that needs this stage began to need it.
  const Progress wanted = need(slot.stage);
  const auto now = now_();
  double waited = -1;
  for (const auto& [id, r] : requests_.all()) {
    if (r.progress != wanted) continue;
    waited = std::max(waited, std::chrono::duration<double>(now - r.waiting_since()).count());
  }
  LostTasks lost;
  if (workers_.grant(slot, waited, lost)) turn_dispatched_ = 0;
  requeue(lost);
}

void Scheduler::release(WorkerSlot& slot) {
  LostTasks lost;
  workers_.release(slot, std::nullopt, lost);
  requeue(lost);
}

// ---------------------------------------------------------------- a pass -------------

void Scheduler::schedule() {
  fail_broken_stages();
  finish_complete();
  if (config_.mode == Mode::kSequential) {
    schedule_sequential();
  } else {
    schedule_concurrent();
  }
}

void Scheduler::fail_broken_stages() {
  // A stage that keeps dying (or whose external workers never come) fails the requests
  // that need it.
  for (StageKind stage : kStageKinds) {
    std::string why;
    if (!workers_.stage_broken(stage, &why)) continue;
    std::vector<uint64_t> doomed;
    for (const auto& [id, r] : requests_.all()) {
      if (r.progress == need(stage)) doomed.push_back(id);
    }
    for (uint64_t id : doomed) {
      Request* request = requests_.find(id);  // a callback may have cancelled it
      if (request)
        finish(*request, std::string(stage_name(stage)) + " stage: " + why, "",
               ErrorKind::kUnavailable);
    }
  }
}

void Scheduler::finish_complete() {
  // A request that produced all its tokens before its worker died is complete.
  std::vector<uint64_t> complete;
  for (const auto& [id, r] : requests_.all()) {
    if (r.progress == Progress::kNeedLanguage && !r.owes_prompt_logprobs() &&
        static_cast<int>(r.tokens.size()) >= r.spec.generation.max_new_tokens) {
      complete.push_back(id);
    }
  }
  for (uint64_t id : complete) {
    if (Request* request = requests_.find(id)) finish(*request, "", "length");
  }
}

void Scheduler::schedule_concurrent() {
  for (auto& slot : workers_.slots()) {
    if (workers_.restart_due(slot)) requeue(workers_.start(slot));
    if (slot.state == WorkerState::kReady && slot.lease == Lease::kNone) grant(slot);
  }
  take_over_cached();
  // Oldest request first, to the least-loaded replica with room.
  std::unordered_multiset<size_t> encoding = requests_.images_in_vision();
  std::vector<BurstTask> burst;
  for (auto& [id, request] : requests_.all()) {
    if (!is_waiting(request.progress)) continue;
    if (request.progress == Progress::kNeedVision && twin_in_vision(request, encoding)) continue;
    WorkerSlot* best = nullptr;
    for (auto& slot : workers_.slots()) {
      if (slot.stage != stage_of(request.progress) || slot.lease != Lease::kGranted ||
          slot.state != WorkerState::kReady || !slot.has_room()) {
        continue;
      }
      if (!best || slot.outstanding.size() < best->outstanding.size()) best = &slot;
    }
    if (best) dispatch(*best, request, encoding, burst);
  }
  send_burst(burst);
}

bool Scheduler::should_give_way(StageKind turn, const Demand& own, const Demand& other) const {
  if (other.waiting == 0) return false;
  if (own.waiting == 0) return true;  // nothing left to start: the other stage's turn
  // The thresholds count only once the holder has had work in this turn: a stage that has
  // just loaded must not give way before doing anything (two stages would hand the device
  // back and forth while requests age past swap_after).
  if (turn_dispatched_ == 0) return false;
  const WorkerSlot* other_slot = workers_.first(other_stage(turn));
  const size_t swap_batch = config_.coordinator.swap_batch > 0
                                ? static_cast<size_t>(config_.coordinator.swap_batch)
                                : static_cast<size_t>(other_slot ? other_slot->batch_size : 1);
  return other.waiting >= swap_batch ||
         other.oldest >= std::chrono::milliseconds(config_.coordinator.swap_after_ms);
}

void Scheduler::schedule_sequential() {
  // Images another request has had encoded since: on to the language stage, with no turn
  // of the vision stage's.
  take_over_cached();
  const auto now = now_();
  std::map<StageKind, Demand> demand = {{StageKind::kVision, {}}, {StageKind::kLanguage, {}}};
  for (const auto& [id, r] : requests_.all()) {
    Demand& d = demand[stage_of(r.progress)];
    ++d.total;
    if (!is_waiting(r.progress)) continue;
    ++d.waiting;
    d.oldest = std::max(d.oldest, now - r.waiting_since());
  }
  auto has_work = [&](StageKind stage) { return demand[stage].total > 0; };

  // The holder has given the device back: because it had no work left, or to give way.
  WorkerSlot* holder = holder_ ? workers_.first(*holder_) : nullptr;
  if (holder && holder->lease == Lease::kNone && holder->state != WorkerState::kStarting &&
      workers_.device_free(holder->device) && (giving_way_ || !has_work(*holder_))) {
    const StageKind previous = *holder_;
    holder_.reset();
    if (giving_way_) {  // the other stage's turn, though this one may have work again
      giving_way_ = false;
      if (has_work(other_stage(previous))) holder_ = other_stage(previous);
    }
  }
  if (!holder_) {
    if (has_work(StageKind::kVision)) {
      holder_ = StageKind::kVision;
    } else if (has_work(StageKind::kLanguage)) {
      holder_ = StageKind::kLanguage;
    } else {
      return;
    }
  }
  const StageKind turn = *holder_;
  holder = workers_.first(turn);
  if (!holder) return;  // a plan without this stage: nothing can take its turn
  if (holder->state == WorkerState::kDown && has_work(turn) && workers_.restart_due(*holder) &&
      workers_.device_free(holder->device)) {
    requeue(workers_.start(*holder));
  }
  if (holder->state == WorkerState::kReady && holder->lease == Lease::kNone && has_work(turn) &&
      workers_.device_free(holder->device)) {
    grant(*holder);
  }
  if (holder->lease != Lease::kGranted) return;
  // Lazy leases: the holder keeps the device while the other stage has nothing waiting (a
  // request whose images are all cached goes straight to a resident language worker). It
  // gives way when it has nothing left to start, or once swap_batch requests wait for the
  // other stage or the oldest has waited swap_after; then it starts nothing new, finishes
  // what it holds and gives the device back.
  const bool give_way = should_give_way(turn, demand[turn], demand[other_stage(turn)]);
  if (!give_way) {
    std::unordered_multiset<size_t> encoding = requests_.images_in_vision();
    std::vector<BurstTask> burst;
    for (auto& [id, request] : requests_.all()) {
      if (!holder->has_room()) break;
      if (request.progress != need(turn)) continue;
      if (turn == StageKind::kVision && twin_in_vision(request, encoding)) continue;
      if (dispatch(*holder, request, encoding, burst)) ++turn_dispatched_;
    }
    send_burst(burst);
  }
  if (give_way && holder->lease == Lease::kGranted && holder->outstanding.empty()) {
    giving_way_ = true;
    release(*holder);
  }
}

}  // namespace llava
