// Process-free stand-ins for the coordinator's layers: a clock set by hand, a worker
// transport that records what was sent and started, and a bench wiring a request table,
// a worker pool and a scheduler over them (no checkpoint, no tokenizer, no socket).
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/plan.h"
#include "common/wire.h"
#include "coordinator/clock.h"
#include "coordinator/embedding_store.h"
#include "coordinator/request_table.h"
#include "coordinator/scheduler.h"
#include "coordinator/worker_pool.h"
#include "coordinator/worker_transport.h"

namespace llava::testing_fakes {

using Kind = schema::Header::Body::Which;

// A time set by the test; it starts an hour past the clock's epoch.
struct FakeClock {
  Clock::time_point now = Clock::time_point(std::chrono::hours(1));
  ClockFn fn() {
    return [this] { return now; };
  }
  void advance(Clock::duration by) { now += by; }
};

struct Sent {
  std::string routing;
  Kind kind;
  uint64_t request = 0;
  uint32_t attempt = 0;
  uint32_t followed_by = 0;  // vision tasks
  uint64_t epoch = 0;        // lease grant and release
  schema::ReleaseHow how = schema::ReleaseHow::EXIT;
  size_t frames = 0;
  std::vector<int32_t> token_ids;  // language tasks
  uint32_t resume_from = 0;
  std::vector<int32_t> stop_token_ids;  // language tasks: the sampling's
  uint64_t image_key = 0;               // language tasks
  size_t table_tokens = 0;              // language tasks: the token table's tokens sent
};

class FakeTransport : public WorkerTransport {
 public:
  std::vector<Sent> sent;
  std::vector<std::pair<StageKind, int>> started;
  std::vector<pid_t> killed, stopped;
  std::deque<ExitStatus> exits;               // what reap() hands out, in order
  std::map<std::string, SendResult> answers;  // by routing; kSent when absent
  std::map<pid_t, ExitStatus> exit_on_wait;   // what wait_exit finds
  pid_t next_pid = 1000;
  // Called with each message sent, before send() returns (a worker that is quicker than
  // the coordinator's thread).
  std::function<void(const Sent&)> on_send;

  SendResult send(const std::string& routing, wire::Outgoing& message) override {
    wire::Incoming in = wire::Incoming::parse(message.parts(), false, wire::Limits{});
    Sent s;
    s.routing = routing;
    s.kind = in.kind();
    s.request = in.request_id();
    s.attempt = in.attempt();
    s.frames = in.frames().size();
    auto body = in.header().getBody();
    if (s.kind == Kind::VISION_TASK) s.followed_by = body.getVisionTask().getFollowedBy();
    if (s.kind == Kind::LEASE_GRANT) s.epoch = body.getLeaseGrant().getEpoch();
    if (s.kind == Kind::LEASE_RELEASE) {
      s.epoch = body.getLeaseRelease().getEpoch();
      s.how = body.getLeaseRelease().getHow();
    }
    if (s.kind == Kind::LANGUAGE_TASK) {
      for (int32_t id : body.getLanguageTask().getTokenIds()) s.token_ids.push_back(id);
      s.resume_from = body.getLanguageTask().getResumeFrom();
      s.image_key = body.getLanguageTask().getImageKey();
      s.table_tokens = body.getLanguageTask().getTokenEnds().size();
      for (int32_t id : body.getLanguageTask().getSampling().getStopTokenIds())
        s.stop_token_ids.push_back(id);
    }
    auto answer = answers.find(routing);
    const SendResult result = answer == answers.end() ? SendResult::kSent : answer->second;
    if (result == SendResult::kSent) {
      if (on_send) on_send(s);
      sent.push_back(std::move(s));
    }
    return result;
  }
  pid_t start(StageKind stage, int replica) override {
    started.emplace_back(stage, replica);
    return next_pid++;
  }
  void kill(pid_t pid) override { killed.push_back(pid); }
  std::optional<ExitStatus> reap() override {
    if (exits.empty()) return std::nullopt;
    ExitStatus status = exits.front();
    exits.pop_front();
    return status;
  }
  std::optional<ExitStatus> wait_exit(pid_t pid, std::chrono::milliseconds) override {
    auto it = exit_on_wait.find(pid);
    if (it == exit_on_wait.end()) return std::nullopt;
    return it->second;
  }
  void stop(pid_t pid, std::chrono::milliseconds) override { stopped.push_back(pid); }
  const std::string& program() const override { return program_; }

  // What was sent of this kind (to this worker, when named).
  std::vector<Sent> of(Kind kind, const std::string& routing = "") const {
    std::vector<Sent> out;
    for (const auto& s : sent) {
      if (s.kind == kind && (routing.empty() || s.routing == routing)) out.push_back(s);
    }
    return out;
  }
  size_t count(Kind kind, const std::string& routing = "") const {
    return of(kind, routing).size();
  }

 private:
  std::string program_ = "/fake/llava-stage";
};

// One embedding frame per image, of a made-up shape (the scheduler never looks inside).
inline std::vector<wire::Frame> fake_embeddings(size_t images) {
  std::vector<wire::Frame> out;
  for (size_t i = 0; i < images; ++i) {
    wire::Frame frame;
    frame.dtype = wire::DType::kF16;
    frame.shape = {4, 8};
    frame.bytes = zmq::message_t(4 * 8 * 2);
    out.push_back(std::move(frame));
  }
  return out;
}

// A pipeline's layers below the loop, over the fakes. The plan: `vision` replicas and
// `language` replicas; sequential ones share "cuda:0", concurrent ones get a device each.
struct Bench {
  PipelineConfig config;
  FakeClock clock;
  FakeTransport transport;
  EmbeddingStore store{64ull << 20, "/tmp"};
  EmbeddingCache cache{64ull << 20};
  std::vector<RequestResult> results;
  std::vector<std::pair<uint64_t, std::string>> texts;
  std::unique_ptr<RequestTable> requests;
  std::unique_ptr<WorkerPool> workers;
  std::unique_ptr<Scheduler> scheduler;

  explicit Bench(Mode mode, int vision = 1, int language = 1, int vision_batch = 2,
                 int language_batch = 2, bool language_first = false) {
    config.mode = mode;
    config.vision.batch_size = vision_batch;
    config.language.batch_size = language_batch;
    config.vision.release = Release::kExit;
    config.language.release = Release::kUnload;
    std::vector<PlannedProcess> plan;
    int device = 0;
    const std::vector<StageKind> order =
        language_first ? std::vector<StageKind>{StageKind::kLanguage, StageKind::kVision}
                       : std::vector<StageKind>{StageKind::kVision, StageKind::kLanguage};
    for (StageKind stage : order) {
      const int replicas = stage == StageKind::kVision ? vision : language;
      for (int r = 0; r < replicas; ++r) {
        PlannedProcess p;
        p.stage = stage_name(stage);
        p.replica = r;
        p.name = p.stage + "-" + std::to_string(r);
        p.device = mode == Mode::kSequential ? "cuda:0" : "cuda:" + std::to_string(device++);
        plan.push_back(p);
      }
    }
    requests = std::make_unique<RequestTable>(
        store, clock.fn(),
        [this](uint64_t id, const std::string& text) { texts.emplace_back(id, text); },
        [this](const RequestResult& result) { results.push_back(result); });
    workers = std::make_unique<WorkerPool>(config, plan, transport, clock.fn(), nullptr);
    scheduler = std::make_unique<Scheduler>(config, std::vector<int64_t>{2}, *requests, *workers,
                                            cache, clock.fn());
  }

  WorkerSlot& slot(const std::string& name) {
    for (auto& s : workers->slots()) {
      if (s.name == name) return s;
    }
    throw std::runtime_error("no slot " + name);
  }
  // The worker's hello arrived: it is registered under its own name as routing id.
  void hello(const std::string& name) { workers->registered(slot(name), name, 1); }
  // Every started worker says hello.
  void hello_all() {
    for (auto& s : workers->slots()) {
      if (s.state == WorkerState::kStarting) hello(s.name);
    }
  }
  // A request of these image files (none: text only), as submit leaves it.
  uint64_t submit(std::vector<std::string> images = {"image-a"}, int max_new_tokens = 8,
                  bool ignore_eos = false) {
    RequestSpec spec;
    spec.generation.max_new_tokens = max_new_tokens;
    spec.generation.ignore_eos = ignore_eos;
    Request& r = requests->add(spec);
    r.images = std::move(images);
    r.image_hashes = EmbeddingCache::hashes(r.images);
    r.prompt = {1, 5, 5, 9};
    r.progress = r.images.empty() ? Progress::kNeedLanguage : Progress::kNeedVision;
    scheduler->take_from_cache(r);
    return r.id;
  }
  Request& request(uint64_t id) { return *requests->find(id); }
  // The vision worker's embeddings for the request arrived (into the cache, as the loop does).
  void embed(uint64_t id) {
    Request& r = request(id);
    workers->forget(r.worker, id);
    auto frames = fake_embeddings(r.images.size());
    cache.put(r.images, r.image_hashes, frames);
    requests->put_embeddings(r, std::move(frames));
  }
  // The language worker answered the request.
  void done(uint64_t id) { scheduler->finish(request(id), "", "eos"); }
  // The worker gave its device back (its LeaseReleased); with exit, its process ended too.
  void released(const std::string& name) {
    WorkerSlot& s = slot(name);
    const bool exits = s.exit_expected();
    const pid_t pid = s.pid;
    workers->released(s);
    if (exits) {
      transport.exits.push_back({pid, "exited with code 0", 0});
      scheduler->requeue(workers->reap());
    }
  }
};

}  // namespace llava::testing_fakes
