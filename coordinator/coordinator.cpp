// The coordinator's loop and its message handlers; submission and cancellation. What they
// act on lives a layer below: the scheduler, and under it the request table, the worker
// pool and the task builders.
#include "coordinator/coordinator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>

#include "common/errors.h"
#include "common/gpu_info.h"
#include "common/plan.h"
#include "common/transport.h"
#include "common/utf8.h"
#include "coordinator/chat_template.h"
#include "coordinator/tasks.h"

namespace llava {
namespace {

std::atomic<int> g_stop{0};  // signals received

constexpr int kMaxImagesPerRequest = 16;
// A prompt's text past this many bytes for each token of the context cannot fit: text
// averages about 4 bytes a token (a vocabulary's longest pieces are about 16).
constexpr int64_t kMaxPromptBytesPerToken = 64;
constexpr auto kReleaseWait = std::chrono::seconds(2);  // at shutdown, for the leases' return
constexpr auto kShutdownPoll = std::chrono::milliseconds(50);

std::string read_image(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    throw RequestError("cannot read image '" + path + "': it is a directory, not an image file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw RequestError("cannot read image '" + path + "': " + std::strerror(errno));
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// mode: auto and release: auto resolved as the workers resolve their copy of the file.
PipelineConfig resolved_config(PipelineConfig config, const LlavaConfig& model) {
  if (config.mode == Mode::kAuto) {
    std::string decision;
    config = resolve_mode(config, model, &decision);
    std::cerr << "llava-pipe: " << decision << "\n";
  }
  if (config.mode == Mode::kSequential) {
    std::string decision;
    config = resolve_release(config, model, host_memory_available(), &decision);
    if (!decision.empty()) std::cerr << "llava-pipe: " << decision << "\n";
  }
  return config;
}

// A refusal at submission, with the kind of error it is.
struct Refusal : RequestError {
  Refusal(ErrorKind kind, const std::string& message) : RequestError(message), kind(kind) {}
  ErrorKind kind;
};

const char* reason_name(schema::FinishReason reason) {
  switch (reason) {
    case schema::FinishReason::EOS:
      return "eos";
    case schema::FinishReason::LENGTH:
      return "length";
    case schema::FinishReason::STOP:
      return "stop";
    case schema::FinishReason::CANCELLED:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace

void Coordinator::request_stop() {
  ++g_stop;
}

Coordinator::Coordinator(const PipelineConfig& config, CoordinatorEvents events,
                         std::string worker_program)
    : model_(load_llava_config(config.model.checkpoint)),
      config_(resolved_config(config, model_)),
      tokenizer_(config.model.checkpoint,
                 {{"<image>", static_cast<int32_t>(model_.image_token_index)}}),
      events_(std::move(events)),
      worker_program_(worker_program.empty() ? executable_directory() + "/llava-stage"
                                             : std::move(worker_program)),
      endpoint_(expand_endpoint(config.coordinator.endpoint, &private_dir_)),
      embeddings_(config.coordinator.embedding_memory, config.coordinator.spill_dir),
      cache_(config.coordinator.embedding_cache),
      shared_(config.coordinator.shared_memory),
      beat_interval_(config.coordinator.heartbeat_interval_ms) {
  g_stop = 0;
  limits_.max_message_bytes = config.coordinator.max_message_size;
  const TransportOptions transport =
      transport_options(config.coordinator, config.coordinator.curve_server_key);
  if (config.coordinator.curve()) {
    std::set<std::string> allowed = {
        read_curve_key(config.coordinator.curve_worker_key, false).public_key};
    for (const auto& file : config.coordinator.curve_allowed)
      allowed.insert(read_curve_key(file, false).public_key);
    zap_ = std::make_unique<ZapHandler>(context_, allowed);
  }
  router_ = bind_router(context_, endpoint_, transport);  // fails fast if the port is taken
  const std::string wake_endpoint =
      "inproc://llava-wake-" + std::to_string(reinterpret_cast<uintptr_t>(this));
  wake_in_ = zmq::socket_t(context_, zmq::socket_type::pull);
  wake_in_.bind(wake_endpoint);
  wake_out_ = zmq::socket_t(context_, zmq::socket_type::push);
  wake_out_.set(zmq::sockopt::sndhwm, 1);  // one pending wake is enough
  wake_out_.set(zmq::sockopt::linger, 0);
  wake_out_.connect(wake_endpoint);
  if (endpoint_.rfind("tcp://", 0) == 0) endpoint_ = last_endpoint(router_);
  transport_ = std::make_unique<RouterTransport>(router_, worker_program_, config_.path, endpoint_,
                                                 kSecretVariable);
  requests_ = std::make_unique<RequestTable>(embeddings_, steady_clock_fn(), events_.on_text,
                                             events_.on_result);
  // One slot per process of the plan (`llava-pipe check` prints the same list).
  workers_ = std::make_unique<WorkerPool>(config_, make_plan(config_, model_).processes,
                                          *transport_, steady_clock_fn(), events_.on_lease_event);
  scheduler_ = std::make_unique<Scheduler>(config_, model_.text.eos_token_ids, *requests_,
                                           *workers_, cache_, steady_clock_fn(), &shared_);
}

Coordinator::~Coordinator() {
  shutdown_workers();
  if (!private_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(private_dir_, ignored);
  }
}

// ---------------------------------------------------------------- requests -----------

uint64_t Coordinator::submit(RequestSpec spec) {
  Request& request = requests_->add(std::move(spec));
  const uint64_t id = request.id;
  request.detokenizer = std::make_unique<Detokenizer>(tokenizer_, request.spec.continues_prompt);
  try {
    if (draining_ || g_stop > 0)
      throw Refusal(ErrorKind::kUnavailable, "refused: the pipeline is shutting down");
    // Bounded queue: past it, an explicit refusal rather than unbounded memory.
    if (requests_->size() > static_cast<size_t>(config_.coordinator.queue_capacity)) {
      throw Refusal(ErrorKind::kOverloaded,
                    "overloaded: " + std::to_string(requests_->size() - 1) +
                        " requests are waiting (coordinator.queue_capacity " +
                        std::to_string(config_.coordinator.queue_capacity) + "); try again later");
    }
    prepare(request);
    scheduler_->take_from_cache(request);  // every image seen before: no vision stage
  } catch (const Refusal& e) {
    scheduler_->finish(request, e.what(), "", e.kind);
  } catch (const RequestError& e) {  // what the request asked for cannot be done
    scheduler_->finish(request, e.what(), "", ErrorKind::kBadRequest);
  }
  // A caller submitting thousands at once holds the loop for a while: the workers must
  // still hear from us, or they take us for gone.
  scheduler_->requeue(workers_->heartbeat());
  return id;
}

std::shared_ptr<const TokenTable> Coordinator::token_table() {
  if (!token_table_)
    token_table_ = std::make_shared<const TokenTable>(llava::token_table(tokenizer_));
  return token_table_;
}

void Coordinator::prepare(Request& request) {
  const RequestSpec& spec = request.spec;
  const size_t bad_byte = utf8_error_offset(spec.prompt);
  if (bad_byte != std::string::npos) {
    throw RequestError("the prompt is not valid UTF-8 (at byte " + std::to_string(bad_byte) + ")");
  }
  const size_t images = spec.image_paths.size() + spec.image_bytes.size();
  if (images > static_cast<size_t>(kMaxImagesPerRequest)) {
    throw RequestError(std::to_string(images) + " images; at most " +
                       std::to_string(kMaxImagesPerRequest) + " per request");
  }
  for (const auto& path : spec.image_paths) request.images.push_back(read_image(path));
  // The client's image bytes move to the request's images: kept once, not twice.
  for (auto& bytes : request.spec.image_bytes) request.images.push_back(std::move(bytes));
  request.spec.image_bytes.clear();
  request.prompt = spec.prompt_ids ? checked_prompt_ids(*spec.prompt_ids, static_cast<int>(images))
                                   : tokenized_prompt(spec, static_cast<int>(images));
  const auto image_token = static_cast<int32_t>(model_.image_token_index);
  // Every image token has its embedding, or the language stage would refuse the request
  // after the vision stage's work (a template that carries the image token, say).
  const auto image_ids = std::count(request.prompt.begin(), request.prompt.end(), image_token);
  if (image_ids != static_cast<int64_t>(images) * model_.image_tokens()) {
    throw RequestError("the prompt has " + std::to_string(image_ids / model_.image_tokens()) +
                       " image placeholders after the chat template, for " +
                       std::to_string(images) + " images");
  }
  auto in_vocabulary = [&](const char* key, int32_t id) {
    if (id < 0 || id >= model_.text.vocab_size) {
      throw RequestError(std::string(key) + ": token id " + std::to_string(id) +
                         " is outside the model's " + std::to_string(model_.text.vocab_size) +
                         "-token vocabulary");
    }
  };
  for (const auto& [id, bias] : spec.generation.logit_bias) in_vocabulary("logit_bias", id);
  for (int32_t id : spec.generation.stop_token_ids) in_vocabulary("stop_token_ids", id);
  if (spec.generation.min_tokens > spec.generation.max_new_tokens) {
    throw RequestError("min_tokens (" + std::to_string(spec.generation.min_tokens) +
                       ") is above max_new_tokens (" +
                       std::to_string(spec.generation.max_new_tokens) + ")");
  }
  if (spec.generation.json_object && spec.generation.min_tokens > 0) {
    throw RequestError(
        "min_tokens cannot go with response_format json_object (or json_schema): the answer ends "
        "where the object closes");
  }
  if (spec.generation.json_object) {
    if (spec.generation.ignore_eos) {
      throw RequestError(
          "response_format json_object (or json_schema) ends the answer with the end-of-sequence "
          "token once the object is closed: it cannot go with ignore_eos");
    }
    request.spec.generation.json_tokens = token_table();
  }
  const int64_t context = context_tokens(config_, model_);
  if (static_cast<int64_t>(request.prompt.size()) >= context) {
    throw RequestError("the prompt is " + std::to_string(request.prompt.size()) + " tokens (with " +
                       std::to_string(model_.image_tokens()) + " per image); the context holds " +
                       std::to_string(context));
  }
  request.progress = request.images.empty() ? Progress::kNeedLanguage : Progress::kNeedVision;
  request.image_hashes = EmbeddingCache::hashes(request.images);
}

std::vector<int32_t> Coordinator::tokenized_prompt(const RequestSpec& spec, int images) {
  const std::string text = apply_chat_template(spec.generation.chat_template, spec.prompt, images);
  // Tokenizing runs on this thread, which every request and worker waits on: a text far
  // longer than the context could hold is refused before it (a 300,000-message chat, 11 MB,
  // held the loop for 1.5 s).
  const int64_t context = context_tokens(config_, model_);
  if (static_cast<int64_t>(text.size()) > context * kMaxPromptBytesPerToken) {
    throw RequestError("the prompt's text is " + std::to_string(text.size()) + " bytes, over " +
                       std::to_string(kMaxPromptBytesPerToken) + " for each of the context's " +
                       std::to_string(context) + " tokens (refused before tokenizing)");
  }
  return expand_image_tokens(tokenizer_.encode(text),
                             static_cast<int32_t>(model_.image_token_index), model_.image_tokens());
}

std::vector<int32_t> Coordinator::checked_prompt_ids(const std::vector<int32_t>& ids,
                                                     int images) const {
  if (images > 0) throw RequestError("a prompt of token ids takes no images");
  if (ids.empty()) throw RequestError("the prompt's token ids are empty");
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string which =
        "the prompt's token id " + std::to_string(ids[i]) + " (at " + std::to_string(i) + ")";
    if (ids[i] < 0 || ids[i] >= model_.text.vocab_size) {
      throw RequestError(which + " is outside the model's " +
                         std::to_string(model_.text.vocab_size) + "-token vocabulary");
    }
    if (ids[i] == model_.image_token_index) {
      throw RequestError(which + " is the image placeholder; images come with a chat request");
    }
  }
  return ids;
}

bool Coordinator::cancel(uint64_t id, const std::string& why) {
  Request* request = requests_->find(id);
  if (!request) return false;
  scheduler_->cancel(*request, why);
  return true;
}

void Coordinator::begin_drain() {
  draining_ = true;
  drain_deadline_ = Clock::now() + std::chrono::milliseconds(config_.coordinator.drain_timeout_ms);
  requests_->drain();  // requests no worker has touched yet end now; the rest may finish
}

void Coordinator::fail_all(const std::string& error) {
  scheduler_->fail_all(error);
}

// ---------------------------------------------------------------- the loop -----------

void Coordinator::run() {
  while (!requests_->empty() && !failed() && step(beat_interval_ / 4)) {
  }
  if (failed()) fail_all(fatal_error());
}

bool Coordinator::step(std::chrono::milliseconds wait) {
  if (g_stop > 0 && !draining_) begin_drain();
  // Every worker gone, and none this coordinator could start again: nothing in flight can
  // finish, so waiting out the drain would only delay the answers.
  const bool no_worker = workers_->none_left();
  if (draining_ && (g_stop > 1 || Clock::now() > drain_deadline_ || no_worker)) {
    fail_all(
        no_worker
            ? "stopped: the pipeline was shut down and no worker is left to finish this request"
            : "stopped: the pipeline was shut down before this request finished");
    return false;
  }
  // Dispatch what is ready before waiting: a request submitted (or an embedding that
  // arrived) must not wait out the poll timeout.
  if (!failed()) scheduler_->schedule();
  receive(wait);
  scheduler_->requeue(workers_->reap());
  scheduler_->requeue(workers_->check_liveness());
  scheduler_->requeue(workers_->heartbeat());
  if (failed()) fail_all(fatal_error());  // nothing can run: every request gets its answer
  return !failed();
}

void Coordinator::wake() {
  std::lock_guard<std::mutex> lock(wake_mutex_);
  (void)wake_out_.send(zmq::message_t(), zmq::send_flags::dontwait);  // full: a wake is pending
}

void Coordinator::receive(std::chrono::milliseconds wait) {
  if (wait.count() > 0) {  // until a message or a wake
    std::array<zmq::pollitem_t, 2> items = {
        zmq::pollitem_t{static_cast<void*>(router_), 0, ZMQ_POLLIN, 0},
        zmq::pollitem_t{static_cast<void*>(wake_in_), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items.data(), items.size(), wait);
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;  // a signal (SIGTERM's drain): handled by the step
    }
    for (zmq::message_t wake; wake_in_.recv(wake, zmq::recv_flags::dontwait);) {
    }
  }
  // Embeddings that came as a range of shared memory: read only where their task was told.
  const wire::SharedResolver resolve = [this](const schema::Header::Reader& header, uint64_t offset,
                                              uint64_t bytes) {
    return shared_.resolve(header, offset, bytes);
  };
  for (auto parts = receive_parts(router_, std::chrono::milliseconds(0)); parts;
       parts = receive_parts(router_, std::chrono::milliseconds(0))) {
    try {
      wire::Incoming message = wire::Incoming::parse(std::move(*parts), true, limits_, resolve);
      handle(message);
    } catch (const SharedMemoryError& e) {
      on_bad_shared_memory(e);
    } catch (const WireError& e) {
      dropped_.write(std::string("a malformed message: ") + e.what());
    }
  }
}

void Coordinator::handle(wire::Incoming& message) {
  using W = schema::Header::Body::Which;
  const auto& id = message.routing_id();
  const std::string routing(static_cast<const char*>(id.data()), id.size());
  if (message.kind() == W::HELLO) {
    on_hello(routing, message.header().getBody().getHello());
    return;
  }
  WorkerSlot* slot = workers_->by_routing(routing);
  if (!slot) {
    // A worker we declared dead (its replies are stale and dropped here), or one that
    // knew another coordinator: it is told to register again.
    zmq::message_t to(id.data(), id.size());
    send_parts(router_, not_registered_message()->parts(), &to);
    return;
  }
  workers_->heard_from(*slot);
  auto body = message.header().getBody();
  StageReport& report = slot->report;
  switch (message.kind()) {
    case W::HEARTBEAT: {
      auto beat = body.getHeartbeat();
      report.peak_bytes = std::max(report.peak_bytes, beat.getPeakDeviceBytes());
      report.load_seconds = std::max(report.load_seconds, beat.getLoadSeconds());
      report.work_seconds = std::max(report.work_seconds, beat.getWorkSeconds());
      report.device_bytes = beat.getDeviceBytes();
      report.allocated_bytes = beat.getAllocatedBytes();
      report.kv_slots_used = beat.getKvSlotsUsed();
      report.kv_slots = beat.getKvSlots();
      break;
    }
    case W::LEASE_RELEASED: {
      auto released = body.getLeaseReleased();
      report.load_seconds = released.getLoadSeconds();
      report.work_seconds = released.getWorkSeconds();
      report.peak_bytes = std::max(report.peak_bytes, released.getPeakDeviceBytes());
      workers_->released(*slot);
      break;
    }
    case W::EMBEDDINGS:
      on_embeddings(*slot, message);
      shared_.answered(message.request_id(), message.attempt());
      break;
    case W::TOKEN_CHUNK:
      on_tokens(message);
      break;
    case W::DONE:
      on_done(message);
      break;
    case W::FAILURE:
      on_failure(*slot, message);
      break;
    default:
      break;
  }
}

void Coordinator::on_hello(const std::string& routing, const schema::Hello::Reader& hello) {
  const StageKind stage =
      hello.getStage() == schema::Stage::VISION ? StageKind::kVision : StageKind::kLanguage;
  const auto secret = hello.getSecret();
  const bool has_secret = std::string(reinterpret_cast<const char*>(secret.begin()),
                                      secret.size()) == transport_->secret();
  WorkerSlot* found = workers_->replica(stage, static_cast<int>(hello.getReplica()));
  if (!found) {
    refuse(routing, std::string("no ") + stage_name(stage) + " replica " +
                        std::to_string(hello.getReplica()) + " in this pipeline's plan");
    return;
  }
  WorkerSlot& slot = *found;
  const std::string who = slot.name + " (pid " + std::to_string(hello.getPid()) + ")";
  if (slot.external) {
    // A worker of a cluster manager registers, or registers again (it restarted, or it
    // lost us and found us again): what the old connection held is requeued.
    const bool repeated = slot.state == WorkerState::kReady && slot.routing == routing &&
                          !slot.granted() && slot.outstanding.empty();
    if (repeated) return;  // a hello sent again before ours was read: nothing was lost
    // Another process for a replica whose worker is alive (two job steps, or a restarted
    // step before the old one is declared dead): the live one keeps it.
    if (slot.incarnation != hello.getIncarnation() && workers_->alive(slot)) {
      refuse(routing, slot.name +
                          " is registered to a live worker (another process); this one may "
                          "register once that one has been silent for the liveness period");
      return;
    }
    if (slot.state != WorkerState::kDown)
      scheduler_->requeue(workers_->worker_died(slot, "registered again"));
    workers_->record(slot, "registered",
                     "pid " + std::to_string(hello.getPid()) + " on " + hello.getDevice().cStr());
  } else {
    // A local slot accepts only the process it started, which presents the secret it was
    // given: a pid is visible to anyone (ps), the secret only to this user.
    if (static_cast<pid_t>(hello.getPid()) != slot.pid || !has_secret) {
      refuse(routing,
             "no worker of this pipeline: " + who +
                 (has_secret ? " is not the process the coordinator started"
                             : " did not present the secret the coordinator gave its workers"));
      return;
    }
    // Registering again (it lost us for a while): it dropped its work and its lease.
    if (slot.state == WorkerState::kReady)
      scheduler_->requeue(workers_->take_back(slot, "registered again"));
  }
  workers_->registered(slot, routing, hello.getIncarnation());
  shared_.registered(workers_->index_of(slot), hello.getSharedMemoryId());
}

void Coordinator::refuse(const std::string& routing, const std::string& why) {
  dropped_.write("a hello: " + why);
  zmq::message_t id(routing.data(), routing.size());
  try_send_parts(router_, refused_message(why)->parts(), &id);
}

void Coordinator::on_embeddings(WorkerSlot& slot, wire::Incoming& message) {
  workers_->forget(slot, message.request_id());
  Request* request = requests_->find(message.request_id(), message.attempt());
  if (!request || request->progress != Progress::kInVision) return;
  if (message.frames().size() != request->images.size()) {
    scheduler_->finish(*request, "vision stage: " + std::to_string(message.frames().size()) +
                                     " embeddings for " + std::to_string(request->images.size()) +
                                     " images");
    return;
  }
  for (const auto& frame : message.frames()) {
    if (frame.shape.size() != 2 || frame.shape[0] != model_.image_tokens() ||
        frame.shape[1] != model_.text.hidden_size) {
      scheduler_->finish(*request, "vision stage: embeddings of an unexpected shape");
      return;
    }
  }
  if (!message.frames().empty()) shared_.learn(message.frames().front().bytes.size());
  cache_.put(request->images, request->image_hashes, message.frames());
  const auto done = message.header().getBody().getEmbeddings();
  request->encode_ms = 1e3 * done.getEncodeSeconds();
  request->preprocess_ms = 1e3 * done.getPreprocessSeconds();
  request->vision_wait_ms = 1e3 * done.getWaitSeconds();
  request->vision_batch_images = static_cast<int>(done.getBatchImages());
  request->vision_worker = slot.name;
  try {
    requests_->put_embeddings(*request, std::move(message.frames()));  // the frames as they came
  } catch (const RequestError& e) {
    scheduler_->finish(*request, e.what());
  }
}

void Coordinator::on_tokens(wire::Incoming& message) {
  Request* request = requests_->find(message.request_id(), message.attempt());
  if (!request || request->progress != Progress::kInLanguage) return;
  auto chunk = message.header().getBody().getTokenChunk();
  const auto ids = chunk.getTokenIds();
  const auto logprobs = chunk.getLogprobs();
  const bool with_logprobs = request->spec.generation.logprobs >= 0;
  // A worker whose answer lacks what was asked of it (or says more): this request fails.
  auto refuse = [&](const std::string& why) {
    scheduler_->cancel_at_worker(*request);
    scheduler_->finish(*request, "language worker: " + why, "", ErrorKind::kInternal);
  };
  if (with_logprobs && logprobs.size() != ids.size()) {
    refuse(std::to_string(ids.size()) + " tokens came with " + std::to_string(logprobs.size()) +
           " logprobs (asked for one each)");
    return;
  }
  if (request->owes_prompt_logprobs()) {
    const auto prompt = chunk.getPromptLogprobs();
    if (prompt.size() + 1 != request->prompt.size()) {
      refuse(std::to_string(prompt.size()) + " prompt logprobs for a prompt of " +
             std::to_string(request->prompt.size()) + " tokens");
      return;
    }
    TokenLogprob first = token_logprob(request->prompt[0]);  // nothing comes before it
    first.logprob = std::numeric_limits<float>::quiet_NaN();
    request->prompt_logprobs.push_back(std::move(first));
    for (unsigned i = 0; i < prompt.size(); ++i) {
      request->prompt_logprobs.push_back(token_logprob(request->prompt[i + 1], prompt[i]));
    }
  }
  if (request->spec.generation.max_new_tokens == 0) {  // sent for the prompt's logprobs alone
    scheduler_->cancel_at_worker(*request);
    scheduler_->finish(*request, "", "length");
    return;
  }
  size_t index = chunk.getFirstIndex();
  std::string fresh;
  for (unsigned i = 0; i < ids.size(); ++i) {
    // Tokens this request already has (a resumed attempt repeats none, but be exact).
    if (index++ < request->tokens.size()) continue;
    request->tokens.push_back(ids[i]);
    if (with_logprobs) request->logprobs.push_back(token_logprob(ids[i], logprobs[i]));
    fresh += request->detokenizer->push(ids[i]);
    // min_tokens: no stop string ends within the text of the answer's first tokens.
    if (request->tokens.size() <= static_cast<size_t>(request->spec.generation.min_tokens)) {
      request->answer.protect(request->answer.text().size() + fresh.size());
    }
  }
  if (!request->first_token) request->first_token = Clock::now();
  const std::string streamable = request->answer.push(fresh);
  if (request->answer.stopped()) {  // a stop string: the answer is complete
    scheduler_->cancel_at_worker(*request);
    scheduler_->finish(*request, "", "stop");  // streams what is left, then answers
  } else if (!streamable.empty() && events_.on_text) {
    if (!request->prompt_logprobs_streamed && !request->prompt_logprobs.empty() &&
        events_.on_logprobs) {
      request->prompt_logprobs_streamed = true;
      events_.on_logprobs(request->id, request->prompt_logprobs);
    }
    if (request->logprobs.size() > request->logprobs_streamed && events_.on_logprobs) {
      const std::vector<TokenLogprob> now(
          request->logprobs.begin() + static_cast<long>(request->logprobs_streamed),
          request->logprobs.end());
      request->logprobs_streamed = request->logprobs.size();
      events_.on_logprobs(request->id, now);
    }
    events_.on_text(request->id, streamable);  // last: it may cancel the request
  }
}

TokenLogprob Coordinator::token_logprob(int32_t token) const {
  TokenLogprob out;
  out.id = token;
  out.text = tokenizer_.token_text(token);
  out.in_text = !tokenizer_.is_special(token);
  return out;
}

TokenLogprob Coordinator::token_logprob(int32_t token, schema::TokenLogprobs::Reader in) const {
  TokenLogprob out = token_logprob(token);
  out.logprob = in.getLogprob();
  const auto ids = in.getTopIds();
  const auto logprobs = in.getTopLogprobs();
  for (unsigned j = 0; j < std::min(ids.size(), logprobs.size()); ++j) {
    out.top.push_back({ids[j], tokenizer_.token_text(ids[j]), logprobs[j]});
  }
  return out;
}

void Coordinator::on_bad_shared_memory(const SharedMemoryError& error) {
  dropped_.write(std::string("an answer: ") + error.what());
  Request* request = requests_->find(error.request, error.attempt);
  if (!request || request->progress != Progress::kInVision || request->worker < 0) return;
  shared_.answered(error.request, error.attempt);
  // The worker its task went to gets bytes from now on; the task runs again (and says, if
  // it fails again).
  const auto worker = static_cast<size_t>(request->worker);
  shared_.refused(worker);
  scheduler_->requeue(*request, workers_->at(worker).name + ": " + error.what(),
                      /*counted=*/false);
}

void Coordinator::on_done(wire::Incoming& message) {
  Request* request = requests_->find(message.request_id(), message.attempt());
  if (!request || request->progress != Progress::kInLanguage) return;
  const auto done = message.header().getBody().getDone();
  request->prefill_ms = 1e3 * done.getPrefillSeconds();
  scheduler_->finish(*request, "", reason_name(done.getReason()));
}

void Coordinator::on_failure(WorkerSlot& slot, wire::Incoming& message) {
  auto failure = message.header().getBody().getFailure();
  const std::string text = failure.getMessage();
  if (message.request_id() == 0) {  // the worker itself cannot work: nothing will run
    if (!failure.getRetryable()) fatal_ = slot.name + ": " + text;
    return;
  }
  workers_->forget(slot, message.request_id());
  shared_.answered(message.request_id(), message.attempt());
  Request* request = requests_->find(message.request_id(), message.attempt());
  if (!request)
    return;  // a stale failure (a language worker's late one among them) changes nothing
  if (failure.getSharedMemory()) {  // not the request's fault, nor the worker's: bytes now
    shared_.refused(workers_->index_of(slot));
    scheduler_->requeue(*request, slot.name + ": " + text, /*counted=*/false);
  } else if (failure.getRetryable()) {
    scheduler_->requeue(*request, slot.name + ": " + text);
  } else {
    scheduler_->finish(*request, std::string(stage_name(slot.stage)) + " stage: " + text, "",
                       failure.getBadRequest() ? ErrorKind::kBadRequest : ErrorKind::kInternal);
  }
}

// ---------------------------------------------------------------- the end ------------

void Coordinator::shutdown_workers() {
  // Take the leases back first (workers report their load and work time and peak memory
  // with the release), waiting a bounded time; then stop every process.
  scheduler_->requeue(workers_->release_all());
  const auto deadline = Clock::now() + kReleaseWait;
  while (workers_->releasing() && Clock::now() < deadline) receive(kShutdownPoll);
  scheduler_->requeue(workers_->stop_all());
}

std::string Coordinator::unavailable_reason() {
  if (failed()) return fatal_error();
  if (draining_) return "draining";
  for (StageKind stage : kStageKinds) {
    std::string why;
    if (workers_->stage_broken(stage, &why))
      return std::string(stage_name(stage)) + " stage: " + why;
  }
  // Sequential mode starts its workers by turns: there a stage is down only when broken.
  if (config_.mode == Mode::kSequential) return "";
  for (StageKind stage : kStageKinds) {
    std::string why = workers_->why_not_serving(stage);
    if (!why.empty()) return why;
  }
  return "";
}

}  // namespace llava
