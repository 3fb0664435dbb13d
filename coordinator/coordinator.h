// The coordinator: owns the request queue, the tokenizer and template, the lease on each
// device, and the worker processes. One thread, one loop that reads like the protocol:
// poll -> on hello / heartbeat / embeddings / tokens / done / failure -> reap exits ->
// check liveness -> heartbeat -> schedule (start, grant, release, dispatch).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>
#include <zmq.hpp>

#include "common/config.h"
#include "common/curve.h"
#include "common/model_config.h"
#include "common/rate_limited_log.h"
#include "common/wire.h"
#include "coordinator/embedding_store.h"
#include "coordinator/stop_strings.h"
#include "coordinator/tokenizer.h"
#include "coordinator/worker_process.h"

namespace llava {

struct RequestSpec {
  std::string client_id;
  std::vector<std::string> image_paths;
  std::vector<std::string> image_bytes;  // images sent by a client (serve), after image_paths
  std::string prompt;
  GenerationSection generation;  // the config's defaults, overridden per request
};

// Why a request failed, for a client's status code (HTTP 400, 429, 503, 500).
enum class ErrorKind {
  kNone,
  kBadRequest,   // the request itself: its prompt, its images, too long for the context
  kOverloaded,   // the queue is full: try again later
  kUnavailable,  // draining, or a stage with no worker that can run it
  kCancelled,    // cancelled by its client (or its client went away)
  kInternal,     // anything else: a worker's failure on this request, a fault of ours
};
const char* error_kind_name(ErrorKind kind);  // "bad_request", ...

struct RequestResult {
  uint64_t id = 0;
  std::string client_id;
  bool ok = false;
  std::string error;  // names the stage and what was wrong
  ErrorKind error_kind = ErrorKind::kNone;
  std::string text;
  std::vector<int32_t> tokens;
  std::string finish;  // "eos", "length"
  int prompt_tokens = 0;
  int attempts = 0;
  double vision_ms = 0, first_token_ms = 0, total_ms = 0;  // since submission
  double encode_ms = 0;  // the vision worker's time for the batch this request's images were in
  int vision_batch_images = 0;  // images in that batch (this request's and others')
  int cached_images = 0;  // images whose embeddings came from the cache (the vision stage skipped)
  double queue_ms = 0;       // from submission until a worker (of either stage) was sent it
  double preprocess_ms = 0;  // decoding + preprocessing in the vision batch (within encode_ms)
  std::string vision_worker;  // the process that encoded its images ("vision-0"), or ""
  double handoff_ms = 0;      // from its embeddings being ready until the language stage was sent them
  uint64_t embedding_bytes = 0;  // the embeddings handed to the language stage
};

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

// Requests waiting for a stage that no worker has been sent yet, per stage.
struct StageQueues {
  size_t vision = 0, language = 0;
};

struct CoordinatorEvents {
  std::function<void(uint64_t request, const std::string& text)> on_text;
  std::function<void(const RequestResult&)> on_result;
  std::function<void(const LeaseEvent&)> on_lease_event;
};

class Coordinator {
 public:
  // worker_program: the llava-stage executable (default: beside this executable).
  Coordinator(const PipelineConfig& config, CoordinatorEvents events,
              std::string worker_program = "");
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Queues a request; one that cannot run (unreadable image, prompt too long) gets its
  // failed result at once. Returns its id.
  uint64_t submit(const RequestSpec& spec);
  // The client gave up: the request gets its final answer ("cancelled") now, and its worker
  // frees what it held for it. False if it already has its answer.
  bool cancel(uint64_t request, const std::string& why = "cancelled by the client");
  // Runs until every submitted request has its one final answer, a fatal error, or a stop.
  void run();
  // One turn of that loop, waiting up to `wait` for workers' messages (a server calls it
  // between reading its clients). False once a stop has ended everything.
  bool step(std::chrono::milliseconds wait);
  bool idle() const { return requests_.empty(); }
  // Requests submitted and not yet answered (what coordinator.queue_capacity bounds).
  size_t pending() const { return requests_.size(); }
  // Async-signal-safe. The first call starts a drain: no new requests, requests not yet
  // started fail ("shutting down"), work in flight finishes within drain_timeout; a
  // second call, the timeout, or every worker gone with none to restart (external
  // workers only) ends the rest with an error.
  static void request_stop();
  bool stopped_by_signal() const { return draining_; }
  // Stops every worker (Shutdown, then SIGKILL after a grace period) and reaps them.
  void shutdown_workers();

  bool failed() const { return !fatal_.empty(); }
  const std::string& fatal_error() const { return fatal_; }
  const std::vector<LeaseEvent>& timeline() const { return timeline_; }
  std::vector<StageReport> reports() const;
  StageQueues queues() const;
  // Any thread: ends the wait of the loop's current or next step() at once (another
  // thread has handed it work, as the HTTP server does).
  void wake();
  // "" when every stage can take work; else why not, starting with "loading:" (a worker
  // is starting or loading its weights), "draining", or the stage that has no live worker
  // and why (its restart budget is spent, an external worker is missing). Sequential mode
  // starts its workers by turns, so there a stage is down only when it is broken.
  std::string unavailable_reason();
  uint64_t embedding_cache_bytes() const { return cache_.bytes(); }
  pid_t pid_of(const std::string& process) const;
  const std::string& endpoint() const { return endpoint_; }
  // The secret the workers it starts present in their hello (LLAVA_PIPE_WORKER_SECRET).
  static constexpr const char* kSecretVariable = "LLAVA_PIPE_WORKER_SECRET";
  const LlavaConfig& model() const { return model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  using Clock = std::chrono::steady_clock;
  enum class SlotState { kDown, kStarting, kReady };
  struct Slot {
    std::string stage, name, device;
    int replica = 0;
    int batch_size = 1;
    pid_t pid = -1;
    std::string routing;
    SlotState state = SlotState::kDown;
    bool granted = false, releasing = false, exit_expected = false;
    bool external = false;  // started by a cluster manager: never started or killed here
    uint64_t epoch = 0;
    uint64_t incarnation = 0;  // of the registered worker process (its hello's)
    Clock::time_point last_seen, restart_after;
    Clock::time_point down_since;  // external: when it was last unregistered
    std::set<uint64_t> outstanding;
    std::deque<Clock::time_point> deaths;  // within coordinator.restart_window
    std::string last_death;                // why it last died
    StageReport report;
  };
  enum class Stage { kNeedVision, kInVision, kNeedLanguage, kInLanguage, kDone };
  struct Request {
    uint64_t id = 0;
    RequestSpec spec;
    std::vector<std::string> images;  // file bytes
    std::vector<size_t> image_hashes;  // EmbeddingCache::hash of each
    std::vector<int32_t> prompt;      // template applied, image tokens expanded
    Stage stage = Stage::kNeedVision;
    uint32_t attempt = 0;
    int requeues = 0;
    int slot = -1;
    std::vector<int32_t> tokens;
    std::unique_ptr<Detokenizer> detokenizer;
    StopStrings text;  // the answer so far, cut at a stop string
    Clock::time_point submitted, embedded, first_token;
    std::optional<Clock::time_point> dispatched, handed_off;  // first sent to a worker / to language
    double preprocess_ms = 0;
    std::string vision_worker;
    uint64_t embedding_bytes = 0;
    double encode_ms = 0;
    int vision_batch_images = 0;
    int cached_images = 0;
  };
  // A scheduling pass's vision tasks: sent together at the pass's end (send_burst), each
  // saying how many more follow it to the same worker.
  struct BurstTask {
    size_t slot;
    uint64_t request;
    std::unique_ptr<wire::Outgoing> message;
  };

  // protocol
  // Handles every waiting message, the first waited for up to `wait`.
  void receive(std::chrono::milliseconds wait);
  void handle(wire::Incoming& message);
  void on_hello(const std::string& routing, const schema::Hello::Reader& hello);
  void refuse(const std::string& routing, const std::string& why);
  void on_embeddings(Slot& slot, wire::Incoming& message);
  void on_tokens(wire::Incoming& message);
  void on_done(wire::Incoming& message);
  void on_failure(Slot& slot, wire::Incoming& message);
  // supervision
  void reap();
  void exited(Slot& slot, const ExitStatus& status);  // its process ended
  void check_liveness();
  void heartbeat();
  void worker_died(Slot& slot, const std::string& reason);
  // The slot's worker lost what it held (it died, or registered again): its requests are
  // requeued and its lease is void.
  void take_back(Slot& slot, const std::string& reason);
  // Died more than max_restarts_per_minute times within the restart window (which slides:
  // the budget recovers as old deaths leave it). Why, in `why`.
  bool over_restart_budget(Slot& slot, std::string* why);
  void start_worker(Slot& slot);
  // scheduling
  void schedule();
  void schedule_sequential();
  void schedule_concurrent();
  bool device_free(const std::string& device) const;
  void grant(Slot& slot);
  void release(Slot& slot, std::optional<Release> how = std::nullopt);
  // Sends the request to the slot's worker; a vision task's images join `encoding` and the
  // task joins `burst` (sent by send_burst).
  void dispatch(Slot& slot, Request& request, std::unordered_multiset<size_t>& encoding,
                std::vector<BurstTask>& burst);
  void send_burst(std::vector<BurstTask>& burst);
  std::unique_ptr<wire::Outgoing> vision_task(const Request& request);  // the image files
  // Prompt + streamed tokens, sampling, and the request's embedding frames (shared).
  std::unique_ptr<wire::Outgoing> language_task(const Request& request);
  // False when it was not sent: the worker is busy (its queue is full: try again later) or
  // gone (then its death is handled here).
  bool send(Slot& slot, wire::Outgoing& message);
  // Tasks a worker may hold at once: the batch it works on and the next one.
  static size_t task_limit(const Slot& slot) { return 2 * static_cast<size_t>(slot.batch_size); }
  // requests
  Request* find(uint64_t id, uint32_t attempt);
  void requeue(Request& request, const std::string& why);
  // Images in the cache: the request goes on to the language stage now. True if it did.
  bool take_from_cache(Request& request);
  // Hashes of the images the vision stage is encoding now.
  std::unordered_multiset<size_t> images_in_vision() const;
  // A request bound for the vision stage: false when its images came from the cache (it
  // now waits for the language stage), or when one of them is being encoded for another
  // request (`encoding`) and will be in the cache (it waits for that).
  bool ready_for_vision(Request& request, const std::unordered_multiset<size_t>& encoding);
  // Since when the request has waited for the stage it needs now: its submission, or for
  // the language stage after images, its embeddings.
  static Clock::time_point waiting_since(const Request& request) {
    return request.stage == Stage::kNeedLanguage && !request.images.empty() ? request.embedded
                                                                             : request.submitted;
  }
  // Tells the worker holding the request (if any) to drop it and free what it holds.
  void cancel_at_worker(const Request& request);
  // The request's embeddings are ready: it waits for the language stage. Throws
  // RequestError when they cannot be kept (a failed spill).
  void put_embeddings(Request& request, std::vector<wire::Frame> frames);
  // An error without a kind is kInternal.
  void finish(Request& request, const std::string& error, const std::string& reason = "",
              ErrorKind kind = ErrorKind::kNone);
  void fail_all(const std::string& error);
  void begin_drain();
  void record(const Slot& slot, const std::string& what, const std::string& detail = "",
              double wait_seconds = -1);
  Slot* slot_by_routing(const std::string& routing);
  bool stage_broken(const std::string& stage, std::string* why);

  PipelineConfig config_;
  LlavaConfig model_;
  Tokenizer tokenizer_;
  CoordinatorEvents events_;
  std::string worker_program_;
  std::string private_dir_;  // a {rundir} endpoint's 0700 folder, removed at the end (set by endpoint_'s initializer)
  std::string endpoint_;
  wire::Limits limits_;
  zmq::context_t context_;
  std::unique_ptr<ZapHandler> zap_;  // with CURVE: who may connect (before router_ binds)
  zmq::socket_t router_;
  zmq::socket_t wake_in_;   // PULL, polled with router_ by the loop
  std::mutex wake_mutex_;   // guards wake_out_ (any thread)
  zmq::socket_t wake_out_;  // PUSH, inproc, to wake_in_
  EmbeddingStore embeddings_;
  EmbeddingCache cache_;
  std::vector<Slot> slots_;
  std::map<uint64_t, Request> requests_;  // until finished
  uint64_t next_id_ = 1;
  std::string holder_;  // sequential: the stage holding the device ("" = none)
  bool giving_way_ = false;  // sequential: the holder was released for the other stage's work
  size_t turn_dispatched_ = 0;  // sequential: tasks the holder was sent since its grant
  bool draining_ = false;
  Clock::time_point drain_deadline_;
  std::string fatal_;
  std::vector<LeaseEvent> timeline_;
  std::set<pid_t> killed_;  // killed by us after a death was declared: reaping is expected
  Clock::time_point started_, last_heartbeat_;
  std::chrono::milliseconds beat_interval_;
  std::string secret_;       // given to the workers it starts
  RateLimitedLog dropped_{"llava-pipe: dropped "};  // malformed messages, refused hellos
};

}  // namespace llava
