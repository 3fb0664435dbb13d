// The request table: adding, finding, requeueing and finishing requests, and the results
// they end with.
#include "coordinator/request_table.h"

#include <stdexcept>

#include "common/errors.h"

namespace llava {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNone:
      return "none";
    case ErrorKind::kBadRequest:
      return "bad_request";
    case ErrorKind::kOverloaded:
      return "overloaded";
    case ErrorKind::kUnavailable:
      return "unavailable";
    case ErrorKind::kCancelled:
      return "cancelled";
    case ErrorKind::kInternal:
      break;
  }
  return "internal";
}

RequestTable::RequestTable(EmbeddingStore& embeddings, ClockFn now, TextFn on_text,
                           ResultFn on_result)
    : embeddings_(embeddings),
      now_(std::move(now)),
      on_text_(std::move(on_text)),
      on_result_(std::move(on_result)) {}

Request& RequestTable::add(RequestSpec spec) {
  Request r;
  r.id = next_id_++;
  r.answer = StopStrings(spec.generation.stop);
  r.spec = std::move(spec);
  r.submitted = now_();
  const uint64_t id = r.id;
  return requests_.emplace(id, std::move(r)).first->second;
}

Request* RequestTable::find(uint64_t id, uint32_t attempt) {
  Request* request = find(id);
  return request && request->attempt == attempt ? request : nullptr;
}

Request* RequestTable::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : &it->second;
}

void RequestTable::finish(Request& request, const std::string& error, const std::string& reason,
                          ErrorKind kind) {
  RequestResult result;
  result.id = request.id;
  result.client_id = request.spec.client_id;
  result.ok = error.empty();
  result.error = error;
  result.error_kind = result.ok                  ? ErrorKind::kNone
                      : kind == ErrorKind::kNone ? ErrorKind::kInternal
                                                 : kind;
  std::string rest;  // the last bytes: the detokenizer's and what a stop string held back
  if (result.ok) {
    if (request.detokenizer) rest = request.answer.push(request.detokenizer->finish());
    rest += request.answer.finish();
  }
  result.text = request.answer.text();
  result.tokens = request.tokens;
  result.logprobs = std::move(request.logprobs);
  result.prompt_logprobs = std::move(request.prompt_logprobs);
  result.finish = reason;
  result.prompt_tokens = static_cast<int>(request.prompt.size());
  result.attempts = static_cast<int>(request.attempt) + 1;
  result.vision_ms = ms_between(request.submitted, request.embedded);
  result.encode_ms = request.encode_ms;
  result.vision_batch_images = request.vision_batch_images;
  result.cached_images = request.cached_images;
  result.first_token_ms = ms_between(request.submitted, request.first_token);
  result.queue_ms = ms_between(request.submitted, request.dispatched);
  result.preprocess_ms = request.preprocess_ms;
  result.vision_wait_ms = request.vision_wait_ms;
  result.prefill_ms = request.prefill_ms;
  result.vision_worker = request.vision_worker;
  if (!request.images.empty()) result.handoff_ms = ms_between(request.embedded, request.handed_off);
  result.embedding_bytes = request.embedding_bytes;
  result.total_ms = ms_between(request.submitted, now_());
  embeddings_.erase(request.id);
  const uint64_t id = request.id;
  requests_.erase(id);  // before the callbacks: one that cancels it finds it answered
  if (!rest.empty() && on_text_) on_text_(id, rest);
  if (on_result_) on_result_(result);
}

bool RequestTable::requeue(Request& request, const std::string& why, bool counted) {
  if (counted && ++request.requeues > kMaxRequeues) {
    finish(request, "gave up after " + std::to_string(kMaxRequeues) + " retries; last: " + why, "",
           ErrorKind::kUnavailable);
    return false;
  }
  ++request.attempt;
  request.worker = -1;
  if (request.progress == Progress::kInVision) request.progress = Progress::kNeedVision;
  if (request.progress == Progress::kInLanguage) request.progress = Progress::kNeedLanguage;
  return true;
}

void RequestTable::drain() {
  std::vector<uint64_t> unstarted;
  for (const auto& [id, r] : requests_) {
    if (is_waiting(r.progress) && !r.embedded_waiting() && r.tokens.empty())
      unstarted.push_back(id);
  }
  for (uint64_t id : unstarted) {
    finish(requests_.at(id), "cancelled: the pipeline is shutting down", "",
           ErrorKind::kUnavailable);
  }
}

void RequestTable::fail_all(const std::string& error) {
  while (!requests_.empty()) finish(requests_.begin()->second, error, "", ErrorKind::kUnavailable);
}

void RequestTable::put_embeddings(Request& request, std::vector<wire::Frame> frames) {
  request.embedding_bytes = 0;
  for (const auto& frame : frames) request.embedding_bytes += frame.bytes.size();
  try {
    embeddings_.put(request.id, std::move(frames));
  } catch (const std::runtime_error& e) {  // a spill that failed (disk full): this request
    throw RequestError(std::string("embeddings: ") + e.what());
  }
  request.progress = Progress::kNeedLanguage;
  request.worker = -1;
  request.embedded = now_();
}

StageQueues RequestTable::queues() const {
  StageQueues q;
  for (const auto& [id, r] : requests_) {
    q.vision += r.progress == Progress::kNeedVision;
    q.language += r.progress == Progress::kNeedLanguage;
  }
  return q;
}

std::unordered_multiset<size_t> RequestTable::images_in_vision() const {
  std::unordered_multiset<size_t> out;
  for (const auto& [id, r] : requests_) {
    if (r.progress == Progress::kInVision) out.insert(r.image_hashes.begin(), r.image_hashes.end());
  }
  return out;
}

}  // namespace llava
