// The requests the coordinator holds until each has its one final answer: what a request
// is (its images, prompt, progress through the stages, attempts, answer so far), and the
// table's bookkeeping: adding, finding (stale attempts dropped), requeueing, finishing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
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
#include "coordinator/stop_strings.h"
#include "coordinator/token_logprob.h"
#include "coordinator/tokenizer.h"

namespace llava {

struct RequestSpec {
  std::string client_id;
  std::vector<std::string> image_paths;
  std::vector<std::string> image_bytes;  // images sent by a client (serve), after image_paths
  std::string prompt;
  // Instead of the prompt: token ids as given (/v1/completions), no template, no images.
  std::optional<std::vector<int32_t>> prompt_ids;
  GenerationSection generation;  // the config's defaults, overridden per request
  // The answer's text continues the prompt's (the API's echo): its first token keeps the
  // leading space a text's start drops.
  bool continues_prompt = false;
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
  std::vector<TokenLogprob> logprobs;  // one per token when it asked (generation.logprobs)
  // One per prompt token when it asked (generation.prompt_logprobs), the first without one.
  std::vector<TokenLogprob> prompt_logprobs;
  std::string finish;  // "eos", "length"
  int prompt_tokens = 0;
  int attempts = 0;
  double vision_ms = 0, first_token_ms = 0, total_ms = 0;  // since submission
  double encode_ms = 0;  // the vision worker's time for the batch this request's images were in
  int vision_batch_images = 0;  // images in that batch (this request's and others')
  int cached_images = 0;  // images whose embeddings came from the cache (the vision stage skipped)
  double queue_ms = 0;    // from submission until a worker (of either stage) was sent it
  double preprocess_ms = 0;   // decoding + preprocessing in the vision batch (within encode_ms)
  // The workers' own times: its task's wait in the vision worker before its batch started
  // (within vision_ms, outside encode_ms), and the language worker's from taking it up to
  // its first token (within first_token_ms; the last attempt's).
  double vision_wait_ms = 0, prefill_ms = 0;
  std::string vision_worker;  // the process that encoded its images ("vision-0"), or ""
  double handoff_ms = 0;  // from its embeddings being ready until the language stage was sent them
  uint64_t embedding_bytes = 0;  // the embeddings handed to the language stage
};

// Requests waiting for a stage that no worker has been sent yet, per stage.
struct StageQueues {
  size_t vision = 0, language = 0;
};

// Where a request is on its way: waiting for a stage, or held by a worker of it.
enum class Progress { kNeedVision, kInVision, kNeedLanguage, kInLanguage };

inline StageKind stage_of(Progress progress) {
  return progress == Progress::kNeedVision || progress == Progress::kInVision
             ? StageKind::kVision
             : StageKind::kLanguage;
}
inline bool is_waiting(Progress progress) {
  return progress == Progress::kNeedVision || progress == Progress::kNeedLanguage;
}
inline Progress need(StageKind stage) {
  return stage == StageKind::kVision ? Progress::kNeedVision : Progress::kNeedLanguage;
}
inline Progress held_by(StageKind stage) {
  return stage == StageKind::kVision ? Progress::kInVision : Progress::kInLanguage;
}

// A request that kills workers (or that they keep failing) stops being retried.
constexpr int kMaxRequeues = 3;

struct Request {
  uint64_t id = 0;
  RequestSpec spec;
  std::vector<std::string> images;   // file bytes
  std::vector<size_t> image_hashes;  // EmbeddingCache::hash of each
  std::vector<int32_t> prompt;       // template applied, image tokens expanded
  Progress progress = Progress::kNeedVision;
  // Bumped by each requeue: a worker's reply carries the attempt it was sent, so the
  // replies of a worker declared dead are told apart and dropped.
  uint32_t attempt = 0;
  int requeues = 0;
  int worker = -1;  // the worker slot (WorkerPool's index) holding it now, or -1
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;        // one per token when it asked
  size_t logprobs_streamed = 0;              // of them, given to on_logprobs
  std::vector<TokenLogprob> prompt_logprobs;  // one per prompt token when it asked
  bool prompt_logprobs_streamed = false;
  // It asked for its prompt's logprobs and has not had them yet: the language stage owes it
  // work even with all its tokens (max_tokens 0).
  bool owes_prompt_logprobs() const {
    return spec.generation.prompt_logprobs && spec.generation.logprobs >= 0 &&
           prompt_logprobs.empty();
  }
  std::unique_ptr<Detokenizer> detokenizer;  // none in tests that stream no tokens
  StopStrings answer;                        // the text so far, cut at a stop string
  Clock::time_point submitted;
  std::optional<Clock::time_point> embedded, first_token;
  std::optional<Clock::time_point> dispatched, handed_off;  // first sent to a worker / to language
  double preprocess_ms = 0, vision_wait_ms = 0, prefill_ms = 0;
  std::string vision_worker;
  uint64_t embedding_bytes = 0;
  double encode_ms = 0;
  int vision_batch_images = 0;
  int cached_images = 0;

  // Embeddings ready (encoded, or from the cache), waiting for the language stage.
  bool embedded_waiting() const { return progress == Progress::kNeedLanguage && !images.empty(); }
  // Since when it has waited for the stage it needs now: its submission, or for the
  // language stage after images, its embeddings.
  Clock::time_point waiting_since() const {
    return embedded_waiting() && embedded ? *embedded : submitted;
  }
};

class RequestTable {
 public:
  using TextFn = std::function<void(uint64_t request, const std::string& text)>;
  using ResultFn = std::function<void(const RequestResult&)>;
  // `embeddings` keeps each request's embeddings until it finishes. on_text gets what a
  // finish releases (the end held back by the detokenizer and the stop strings), on_result
  // every final answer.
  RequestTable(EmbeddingStore& embeddings, ClockFn now, TextFn on_text, ResultFn on_result);

  // Submit's bookkeeping: a new request, its id, its submission time, its stop strings.
  Request& add(RequestSpec spec);
  // The request with this id and attempt; nothing when it has its answer or the attempt
  // is an earlier one (a reply from a worker declared dead that woke up).
  Request* find(uint64_t id, uint32_t attempt);
  Request* find(uint64_t id);

  // The one final answer: builds the result (an error without a kind is kInternal), forgets
  // the request and its embeddings, then tells the callbacks (which may cancel or submit).
  // The worker holding it is the caller's to free (Scheduler::finish does both).
  void finish(Request& request, const std::string& error, const std::string& reason = "",
              ErrorKind kind = ErrorKind::kNone);
  // Its worker lost it: it waits for its stage again with its next attempt, or, past
  // kMaxRequeues, finishes ("gave up"). True if it will run again. Its worker is the
  // caller's to free. Not `counted`: a retry that is nobody's failure (its embeddings go
  // again as bytes, not through shared memory).
  bool requeue(Request& request, const std::string& why, bool counted = true);
  // Draining: every request no worker has touched yet ends now.
  void drain();
  // Ends every request (nothing can run any more).
  void fail_all(const std::string& error);

  // The request's embeddings are ready: it waits for the language stage. Throws
  // RequestError when they cannot be kept (a failed spill).
  void put_embeddings(Request& request, std::vector<wire::Frame> frames);
  // Its embedding frames to send (payloads shared).
  std::vector<wire::Frame> embeddings(uint64_t id) { return embeddings_.share(id); }

  StageQueues queues() const;
  // Hashes of the images the vision stage is encoding now.
  std::unordered_multiset<size_t> images_in_vision() const;

  // Oldest first (ids grow with submission).
  std::map<uint64_t, Request>& all() { return requests_; }
  const std::map<uint64_t, Request>& all() const { return requests_; }
  size_t size() const { return requests_.size(); }
  bool empty() const { return requests_.empty(); }

 private:
  EmbeddingStore& embeddings_;
  ClockFn now_;
  TextFn on_text_;
  ResultFn on_result_;
  std::map<uint64_t, Request> requests_;  // until finished
  uint64_t next_id_ = 1;
};

}  // namespace llava
