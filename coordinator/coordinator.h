// The coordinator: the loop and its message handlers, over the layers that hold the rest
// (scheduler.h -> request_table.h, worker_pool.h, tasks.h). One thread, one loop that reads
// like the protocol: schedule (start, grant, release, dispatch) -> poll -> on hello /
// heartbeat / embeddings / tokens / done / failure -> reap exits -> check liveness -> heartbeat.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "common/config.h"
#include "common/curve.h"
#include "common/model_config.h"
#include "common/rate_limited_log.h"
#include "common/wire.h"
#include "coordinator/clock.h"
#include "coordinator/embedding_store.h"
#include "coordinator/request_table.h"
#include "coordinator/scheduler.h"
#include "coordinator/shared_embeddings.h"
#include "coordinator/tokenizer.h"
#include "coordinator/worker_pool.h"
#include "coordinator/worker_transport.h"

namespace llava {

// RequestSpec, RequestResult, ErrorKind, StageQueues: coordinator/request_table.h;
// LeaseEvent, StageReport: coordinator/worker_pool.h.

struct CoordinatorEvents {
  std::function<void(uint64_t request, const std::string& text)> on_text;
  // A request that asked for logprobs: those of the tokens whose text the next on_text
  // brings (the rest come with its result).
  std::function<void(uint64_t request, const std::vector<TokenLogprob>& logprobs)> on_logprobs;
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
  // failed result at once. Returns its id. A caller done with the spec moves it in: its
  // image bytes are then kept once, not copied.
  uint64_t submit(RequestSpec spec);
  // The client gave up: the request gets its final answer ("cancelled") now, and its worker
  // frees what it held for it. False if it already has its answer.
  bool cancel(uint64_t request, const std::string& why = "cancelled by the client");
  // Runs until every submitted request has its one final answer, a fatal error, or a stop.
  void run();
  // One turn of that loop, waiting up to `wait` for workers' messages (a server calls it
  // between reading its clients). False once a stop has ended everything.
  bool step(std::chrono::milliseconds wait);
  bool idle() const { return requests_->empty(); }
  // Requests submitted and not yet answered (what coordinator.queue_capacity bounds).
  size_t pending() const { return requests_->size(); }
  // Async-signal-safe. The first call starts a drain: no new requests, requests not yet
  // started fail ("shutting down"), work in flight finishes within drain_timeout; a
  // second call, the timeout, or every worker gone with none to restart (external
  // workers only) ends the rest with an error.
  static void request_stop();
  bool stopped_by_signal() const { return draining_; }
  // Stops every worker (Shutdown, then SIGKILL after a grace period) and reaps them.
  void shutdown_workers();

  bool failed() const { return !fatal_error().empty(); }
  const std::string& fatal_error() const { return fatal_.empty() ? workers_->fatal() : fatal_; }
  const std::vector<LeaseEvent>& timeline() const { return workers_->timeline(); }
  std::vector<StageReport> reports() const { return workers_->reports(); }
  StageQueues queues() const { return requests_->queues(); }
  // Any thread: ends the wait of the loop's current or next step() at once (another
  // thread has handed it work, as the HTTP server does).
  void wake();
  // "" when every stage can take work; else why not, starting with "loading:" (a worker
  // is starting or loading its weights), "draining", or the stage that has no live worker
  // and why (its restart budget is spent, an external worker is missing). Sequential mode
  // starts its workers by turns, so there a stage is down only when it is broken.
  std::string unavailable_reason();
  uint64_t embedding_cache_bytes() const { return cache_.bytes(); }
  // Embeddings through shared memory (coordinator.shared_memory): what went that way.
  const SharedEmbeddings& shared_embeddings() const { return shared_; }
  pid_t pid_of(const std::string& process) const { return workers_->pid_of(process); }
  const std::string& endpoint() const { return endpoint_; }
  // The secret the workers it starts present in their hello (LLAVA_PIPE_WORKER_SECRET).
  static constexpr const char* kSecretVariable = "LLAVA_PIPE_WORKER_SECRET";
  const LlavaConfig& model() const { return model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  // Handles every waiting message, the first waited for up to `wait`.
  void receive(std::chrono::milliseconds wait);
  void handle(wire::Incoming& message);
  void on_hello(const std::string& routing, const schema::Hello::Reader& hello);
  void refuse(const std::string& routing, const std::string& why);
  void on_embeddings(WorkerSlot& slot, wire::Incoming& message);
  void on_tokens(wire::Incoming& message);
  // A token's logprobs as the worker sent them, with the tokens' texts; without them, the
  // token and its text alone.
  TokenLogprob token_logprob(int32_t token, schema::TokenLogprobs::Reader in) const;
  TokenLogprob token_logprob(int32_t token) const;
  void on_done(wire::Incoming& message);
  void on_failure(WorkerSlot& slot, wire::Incoming& message);
  // An answer whose embeddings were not where its task was told to write them.
  void on_bad_shared_memory(const SharedMemoryError& error);
  void begin_drain();
  void fail_all(const std::string& error);
  // The request's images, prompt and progress, from its spec; throws RequestError (or a
  // refusal) when it cannot run.
  void prepare(Request& request);
  // The prompt's ids: the template applied to the text, tokenized, image tokens expanded;
  // or the client's ids, each checked against the vocabulary.
  std::vector<int32_t> tokenized_prompt(const RequestSpec& spec, int images);
  std::vector<int32_t> checked_prompt_ids(const std::vector<int32_t>& ids, int images) const;
  // Every token's bytes (Tokenizer::token_text; none for special tokens), for JSON mode's
  // tasks: made at the first such request.
  std::shared_ptr<const TokenTable> token_table();

  LlavaConfig model_;
  PipelineConfig config_;  // its mode and release resolved
  Tokenizer tokenizer_;
  std::shared_ptr<const TokenTable> token_table_;  // token_table()'s
  CoordinatorEvents events_;
  std::string worker_program_;
  std::string private_dir_;  // a {rundir} endpoint's 0700 folder, removed at the end (set by
                             // endpoint_'s initializer)
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
  SharedEmbeddings shared_;
  // The layers below the loop, made once the endpoint is bound: the workers' transport,
  // the request table and the worker pool, and the scheduler over both.
  std::unique_ptr<RouterTransport> transport_;  // holds the secret given to the workers
  std::unique_ptr<RequestTable> requests_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<Scheduler> scheduler_;
  bool draining_ = false;
  Clock::time_point drain_deadline_;
  std::string fatal_;  // a worker that cannot work at all (the pool has its own: fatal_error())
  std::chrono::milliseconds beat_interval_;
  RateLimitedLog dropped_{"llava-pipe: dropped "};  // malformed messages, refused hellos
};

}  // namespace llava
