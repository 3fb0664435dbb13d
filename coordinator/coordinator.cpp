// The coordinator's loop, its message handlers, supervision and scheduling.
#include "coordinator/coordinator.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "common/errors.h"
#include "common/plan.h"
#include "common/sampling.h"
#include "common/transport.h"
#include "common/units.h"
#include "common/utf8.h"
#include "coordinator/chat_template.h"
#include "coordinator/worker_process.h"

namespace llava {
namespace {

std::atomic<int> g_stop{0};  // signals received

constexpr int kMaxRequeues = 3;              // a request that kills workers stops being retried
constexpr int kMaxImagesPerRequest = 16;
constexpr auto kStartupGrace = std::chrono::seconds(60);  // process start to hello

// {pid}: this process's id; {rundir}: a new folder only this user can enter (`folder`
// gets its path, to be removed at the end), so that no other user can connect to an
// ipc socket file in it.
std::string expand_endpoint(std::string endpoint, std::string* folder) {
  auto at = endpoint.find("{pid}");
  if (at != std::string::npos) endpoint.replace(at, 5, std::to_string(getpid()));
  at = endpoint.find("{rundir}");
  if (at != std::string::npos) {
    const char* base = std::getenv("XDG_RUNTIME_DIR");
    if (!base || access(base, W_OK) != 0) base = std::getenv("TMPDIR");
    if (!base || access(base, W_OK) != 0) base = "/tmp";
    std::string pattern = std::string(base) + "/llava-pipe-XXXXXX";
    if (!mkdtemp(pattern.data())) {  // mkdtemp makes it 0700
      throw TransportError(std::string("cannot make a private folder for the endpoint in ") + base +
                           ": " + std::strerror(errno));
    }
    *folder = pattern;
    endpoint.replace(at, 8, pattern);
  }
  return endpoint;
}

std::string random_secret() {
  std::random_device device;
  std::string secret;
  for (int i = 0; i < 4; ++i) {
    char part[9];
    std::snprintf(part, sizeof part, "%08x", device());
    secret += part;
  }
  return secret;
}

std::string routing_of(const zmq::message_t& id) {
  return std::string(static_cast<const char*>(id.data()), id.size());
}

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

}  // namespace

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNone: return "none";
    case ErrorKind::kBadRequest: return "bad_request";
    case ErrorKind::kOverloaded: return "overloaded";
    case ErrorKind::kUnavailable: return "unavailable";
    case ErrorKind::kCancelled: return "cancelled";
    case ErrorKind::kInternal: break;
  }
  return "internal";
}

namespace {

// A refusal at submission, with the kind of error it is.
struct Refusal : RequestError {
  Refusal(ErrorKind kind, const std::string& message) : RequestError(message), kind(kind) {}
  ErrorKind kind;
};

const char* reason_name(schema::FinishReason reason) {
  switch (reason) {
    case schema::FinishReason::EOS: return "eos";
    case schema::FinishReason::LENGTH: return "length";
    case schema::FinishReason::STOP: return "stop";
    case schema::FinishReason::CANCELLED: return "cancelled";
  }
  return "unknown";
}

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  if (a.time_since_epoch().count() == 0 || b.time_since_epoch().count() == 0) return 0;
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

void Coordinator::request_stop() { ++g_stop; }

Coordinator::Coordinator(const PipelineConfig& config, CoordinatorEvents events,
                         std::string worker_program)
    : config_(config),
      model_(load_llava_config(config.model.checkpoint)),
      tokenizer_(config.model.checkpoint,
                 {{"<image>", static_cast<int32_t>(model_.image_token_index)}}),
      events_(std::move(events)),
      worker_program_(worker_program.empty() ? executable_directory() + "/llava-stage"
                                             : std::move(worker_program)),
      endpoint_(expand_endpoint(config.coordinator.endpoint, &private_dir_)),
      embeddings_(config.coordinator.embedding_memory, config.coordinator.spill_dir),
      cache_(config.coordinator.embedding_cache),
      started_(Clock::now()),
      beat_interval_(config.coordinator.heartbeat_interval_ms),
      secret_(random_secret()) {
  g_stop = 0;
  if (config_.mode == Mode::kAuto) {  // the workers resolve their copy of the file alike
    std::string decision;
    config_ = resolve_mode(config_, model_, &decision);
    std::cerr << "llava-pipe: " << decision << "\n";
  }
  limits_.max_message_bytes = config.coordinator.max_message_size;
  const TransportOptions transport =
      transport_options(config.coordinator, config.coordinator.curve_server_key);
  if (config.coordinator.curve()) {
    std::set<std::string> allowed = {read_curve_key(config.coordinator.curve_worker_key, false).public_key};
    for (const auto& file : config.coordinator.curve_allowed) allowed.insert(read_curve_key(file, false).public_key);
    zap_ = std::make_unique<ZapHandler>(context_, allowed);
  }
  router_ = bind_router(context_, endpoint_, transport);  // fails fast if the port is taken
  const std::string wake_endpoint = "inproc://llava-wake-" + std::to_string(reinterpret_cast<uintptr_t>(this));
  wake_in_ = zmq::socket_t(context_, zmq::socket_type::pull);
  wake_in_.bind(wake_endpoint);
  wake_out_ = zmq::socket_t(context_, zmq::socket_type::push);
  wake_out_.set(zmq::sockopt::sndhwm, 1);  // one pending wake is enough
  wake_out_.set(zmq::sockopt::linger, 0);
  wake_out_.connect(wake_endpoint);
  if (endpoint_.rfind("tcp://", 0) == 0) endpoint_ = last_endpoint(router_);
  // One slot per process of the plan (`llava-pipe check` prints the same list).
  for (const PlannedProcess& process : make_plan(config_, model_).processes) {
    Slot slot;
    slot.stage = process.stage;
    slot.replica = process.replica;
    slot.name = process.name;
    slot.device = process.device;
    const StageSection& section = process.stage == "vision" ? config_.vision : config_.language;
    slot.batch_size = section.batch_size;
    slot.external = section.external;
    slot.down_since = started_;
    slot.report.process = slot.name;
    slot.report.device = slot.device;
    slots_.push_back(slot);
  }
}

Coordinator::~Coordinator() {
  shutdown_workers();
  if (!private_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(private_dir_, ignored);
  }
}

// ---------------------------------------------------------------- requests -----------

uint64_t Coordinator::submit(const RequestSpec& spec) {
  Request r;
  r.id = next_id_++;
  r.spec = spec;
  r.submitted = Clock::now();
  r.detokenizer = std::make_unique<Detokenizer>(tokenizer_);
  r.text = StopStrings(spec.generation.stop);
  const uint64_t id = r.id;
  auto& request = requests_.emplace(id, std::move(r)).first->second;
  try {
    if (draining_ || g_stop > 0) throw Refusal(ErrorKind::kUnavailable, "refused: the pipeline is shutting down");
    // Bounded queue: past it, an explicit refusal rather than unbounded memory.
    if (requests_.size() > static_cast<size_t>(config_.coordinator.queue_capacity)) {
      throw Refusal(ErrorKind::kOverloaded, "overloaded: " + std::to_string(requests_.size() - 1) +
                         " requests are waiting (coordinator.queue_capacity " +
                         std::to_string(config_.coordinator.queue_capacity) + "); try again later");
    }
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
    for (const auto& bytes : spec.image_bytes) request.images.push_back(bytes);
    const std::string text = apply_chat_template(spec.generation.chat_template, spec.prompt,
                                                 static_cast<int>(images));
    request.prompt = expand_image_tokens(tokenizer_.encode(text),
                                         static_cast<int32_t>(model_.image_token_index),
                                         model_.image_tokens());
    // Every image token has its embedding, or the language stage would refuse the request
    // after the vision stage's work (a template that carries the image token, say).
    const auto image_ids = std::count(request.prompt.begin(), request.prompt.end(),
                                      static_cast<int32_t>(model_.image_token_index));
    if (image_ids != static_cast<int64_t>(images) * model_.image_tokens()) {
      throw RequestError("the prompt has " + std::to_string(image_ids / model_.image_tokens()) +
                         " image placeholders after the chat template, for " +
                         std::to_string(images) + " images");
    }
    const int64_t context = context_tokens(config_, model_);
    if (static_cast<int64_t>(request.prompt.size()) >= context) {
      throw RequestError("the prompt is " + std::to_string(request.prompt.size()) +
                         " tokens (with " + std::to_string(model_.image_tokens()) +
                         " per image); the context holds " + std::to_string(context));
    }
    request.stage = request.images.empty() ? Stage::kNeedLanguage : Stage::kNeedVision;
    request.image_hashes = EmbeddingCache::hashes(request.images);
    take_from_cache(request);  // every image seen before: no vision stage
  } catch (const Refusal& e) {
    finish(request, e.what(), "", e.kind);
  } catch (const RequestError& e) {  // what the request asked for cannot be done
    finish(request, e.what(), "", ErrorKind::kBadRequest);
  }
  // A caller submitting thousands at once holds the loop for a while: the workers must
  // still hear from us, or they take us for gone.
  heartbeat();
  return id;
}

bool Coordinator::cancel(uint64_t id, const std::string& why) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return false;
  cancel_at_worker(it->second);
  finish(it->second, why, "cancelled", ErrorKind::kCancelled);
  return true;
}

void Coordinator::cancel_at_worker(const Request& request) {
  if (request.slot < 0) return;
  Slot& slot = slots_[static_cast<size_t>(request.slot)];
  if (slot.routing.empty()) return;
  wire::Outgoing message(request.id, request.attempt);
  message.header().getBody().initCancel();
  send(slot, message);
}

Coordinator::Request* Coordinator::find(uint64_t id, uint32_t attempt) {
  auto it = requests_.find(id);
  // A reply from an earlier attempt (a worker declared dead that woke up) is stale.
  if (it == requests_.end() || it->second.attempt != attempt) return nullptr;
  return &it->second;
}

void Coordinator::finish(Request& request, const std::string& error, const std::string& reason,
                         ErrorKind kind) {
  RequestResult result;
  result.id = request.id;
  result.client_id = request.spec.client_id;
  result.ok = error.empty();
  result.error = error;
  result.error_kind = result.ok ? ErrorKind::kNone : kind == ErrorKind::kNone ? ErrorKind::kInternal : kind;
  std::string rest;  // the last bytes: the detokenizer's and what a stop string held back
  if (result.ok) {
    rest = request.text.push(request.detokenizer->finish());
    rest += request.text.finish();
  }
  result.text = request.text.text();
  result.tokens = request.tokens;
  result.finish = reason;
  result.prompt_tokens = static_cast<int>(request.prompt.size());
  result.attempts = static_cast<int>(request.attempt) + 1;
  const auto now = Clock::now();
  result.vision_ms = ms_between(request.submitted, request.embedded);
  result.encode_ms = request.encode_ms;
  result.vision_batch_images = request.vision_batch_images;
  result.cached_images = request.cached_images;
  result.first_token_ms = ms_between(request.submitted, request.first_token);
  if (request.dispatched) result.queue_ms = ms_between(request.submitted, *request.dispatched);
  result.preprocess_ms = request.preprocess_ms;
  result.vision_worker = request.vision_worker;
  if (request.handed_off && !request.images.empty()) {
    result.handoff_ms = ms_between(request.embedded, *request.handed_off);
  }
  result.embedding_bytes = request.embedding_bytes;
  result.total_ms = ms_between(request.submitted, now);
  if (request.slot >= 0) slots_[static_cast<size_t>(request.slot)].outstanding.erase(request.id);
  embeddings_.erase(request.id);
  const uint64_t id = request.id;
  requests_.erase(id);  // before the callbacks: one that cancels it finds it answered
  if (!rest.empty() && events_.on_text) events_.on_text(id, rest);
  if (events_.on_result) events_.on_result(result);
}

void Coordinator::requeue(Request& request, const std::string& why) {
  if (++request.requeues > kMaxRequeues) {
    finish(request, "gave up after " + std::to_string(kMaxRequeues) + " retries; last: " + why, "",
           ErrorKind::kUnavailable);
    return;
  }
  ++request.attempt;
  if (request.slot >= 0) slots_[static_cast<size_t>(request.slot)].outstanding.erase(request.id);
  request.slot = -1;
  if (request.stage == Stage::kInVision) request.stage = Stage::kNeedVision;
  if (request.stage == Stage::kInLanguage) request.stage = Stage::kNeedLanguage;
}

void Coordinator::begin_drain() {
  draining_ = true;
  drain_deadline_ = Clock::now() + std::chrono::milliseconds(config_.coordinator.drain_timeout_ms);
  // Requests no worker has touched yet end now; the rest may finish.
  std::vector<uint64_t> unstarted;
  for (auto& [id, r] : requests_) {
    const bool embedded = r.stage == Stage::kNeedLanguage && !r.images.empty();
    if ((r.stage == Stage::kNeedVision || r.stage == Stage::kNeedLanguage) && !embedded &&
        r.tokens.empty()) {
      unstarted.push_back(id);
    }
  }
  for (uint64_t id : unstarted) {
    finish(requests_.at(id), "cancelled: the pipeline is shutting down", "", ErrorKind::kUnavailable);
  }
}

void Coordinator::fail_all(const std::string& error) {
  while (!requests_.empty()) finish(requests_.begin()->second, error, "", ErrorKind::kUnavailable);
}

// ---------------------------------------------------------------- the loop -----------

void Coordinator::run() {
  while (!requests_.empty() && fatal_.empty() && step(beat_interval_ / 4)) {
  }
  if (!fatal_.empty()) fail_all(fatal_);
}

bool Coordinator::step(std::chrono::milliseconds wait) {
  if (g_stop > 0 && !draining_) begin_drain();
  // Every worker gone, and none this coordinator could start again: nothing in flight can
  // finish, so waiting out the drain would only delay the answers.
  const bool no_worker = std::all_of(slots_.begin(), slots_.end(), [](const Slot& slot) {
    return slot.external && slot.state == SlotState::kDown;
  });
  if (draining_ && (g_stop > 1 || Clock::now() > drain_deadline_ || no_worker)) {
    fail_all(no_worker ? "stopped: the pipeline was shut down and no worker is left to finish this request"
                       : "stopped: the pipeline was shut down before this request finished");
    return false;
  }
  // Dispatch what is ready before waiting: a request submitted (or an embedding that
  // arrived) must not wait out the poll timeout.
  if (fatal_.empty()) schedule();
  receive(wait);
  reap();
  check_liveness();
  heartbeat();
  if (!fatal_.empty()) fail_all(fatal_);  // nothing can run: every request gets its answer
  return fatal_.empty();
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
  for (auto parts = receive_parts(router_, std::chrono::milliseconds(0)); parts;
       parts = receive_parts(router_, std::chrono::milliseconds(0))) {
    try {
      wire::Incoming message = wire::Incoming::parse(std::move(*parts), true, limits_);
      handle(message);
    } catch (const WireError& e) {
      dropped_.write(std::string("a malformed message: ") + e.what());
    }
  }
}

Coordinator::Slot* Coordinator::slot_by_routing(const std::string& routing) {
  for (auto& slot : slots_) {
    if (!slot.routing.empty() && slot.routing == routing) return &slot;
  }
  return nullptr;
}

void Coordinator::handle(wire::Incoming& message) {
  using W = schema::Header::Body::Which;
  const std::string routing = routing_of(message.routing_id());
  if (message.kind() == W::HELLO) {
    on_hello(routing, message.header().getBody().getHello());
    return;
  }
  Slot* slot = slot_by_routing(routing);
  if (!slot) {
    // A worker we declared dead (its replies are stale and dropped here), or one that
    // knew another coordinator: it is told to register again.
    wire::Outgoing again;
    again.header().getBody().initNotRegistered();
    zmq::message_t id(message.routing_id().data(), message.routing_id().size());
    send_parts(router_, again.parts(), &id);
    return;
  }
  slot->last_seen = Clock::now();
  auto body = message.header().getBody();
  switch (message.kind()) {
    case W::HEARTBEAT: {
      auto beat = body.getHeartbeat();
      slot->report.peak_bytes = std::max(slot->report.peak_bytes, beat.getPeakDeviceBytes());
      slot->report.load_seconds = std::max(slot->report.load_seconds, beat.getLoadSeconds());
      slot->report.work_seconds = std::max(slot->report.work_seconds, beat.getWorkSeconds());
      slot->report.device_bytes = beat.getDeviceBytes();
      slot->report.allocated_bytes = beat.getAllocatedBytes();
      slot->report.kv_slots_used = beat.getKvSlotsUsed();
      slot->report.kv_slots = beat.getKvSlots();
      break;
    }
    case W::LEASE_RELEASED: {
      auto released = body.getLeaseReleased();
      slot->report.load_seconds = released.getLoadSeconds();
      slot->report.work_seconds = released.getWorkSeconds();
      slot->report.peak_bytes = std::max(slot->report.peak_bytes, released.getPeakDeviceBytes());
      slot->granted = false;
      slot->releasing = false;
      record(*slot, "released");
      break;
    }
    case W::EMBEDDINGS: on_embeddings(*slot, message); break;
    case W::TOKEN_CHUNK: on_tokens(message); break;
    case W::DONE: on_done(message); break;
    case W::FAILURE: on_failure(*slot, message); break;
    default: break;
  }
}

void Coordinator::on_hello(const std::string& routing, const schema::Hello::Reader& hello) {
  const std::string stage = hello.getStage() == schema::Stage::VISION ? "vision" : "language";
  const auto secret = hello.getSecret();
  const bool has_secret = std::string(reinterpret_cast<const char*>(secret.begin()), secret.size()) == secret_;
  for (auto& slot : slots_) {
    if (slot.stage != stage || slot.replica != static_cast<int>(hello.getReplica())) continue;
    const std::string who = slot.name + " (pid " + std::to_string(hello.getPid()) + ")";
    if (slot.external) {
      // A worker of a cluster manager registers, or registers again (it restarted, or it
      // lost us and found us again): what the old connection held is requeued.
      const bool repeated = slot.state == SlotState::kReady && slot.routing == routing && !slot.granted &&
                            slot.outstanding.empty();
      if (repeated) return;  // a hello sent again before ours was read: nothing was lost
      // Another process for a replica whose worker is alive (two job steps, or a restarted
      // step before the old one is declared dead): the live one keeps it.
      const bool other_process = slot.incarnation != hello.getIncarnation();
      const bool alive = slot.state == SlotState::kReady &&
                         Clock::now() - slot.last_seen <= beat_interval_ * config_.coordinator.liveness;
      if (other_process && alive) {
        refuse(routing, slot.name + " is registered to a live worker (another process); this one may "
                        "register once that one has been silent for the liveness period");
        return;
      }
      if (slot.state != SlotState::kDown) worker_died(slot, "registered again");
      record(slot, "registered", "pid " + std::to_string(hello.getPid()) + " on " + hello.getDevice().cStr());
    } else {
      // A local slot accepts only the process it started, which presents the secret it was
      // given: a pid is visible to anyone (ps), the secret only to this user.
      if (static_cast<pid_t>(hello.getPid()) != slot.pid || !has_secret) {
        refuse(routing, "no worker of this pipeline: " + who +
                            (has_secret ? " is not the process the coordinator started"
                                        : " did not present the secret the coordinator gave its workers"));
        return;
      }
      // Registering again (it lost us for a while): it dropped its work and its lease.
      if (slot.state == SlotState::kReady) take_back(slot, "registered again");
    }
    slot.routing = routing;
    slot.incarnation = hello.getIncarnation();
    slot.state = SlotState::kReady;
    slot.last_seen = Clock::now();
    return;
  }
  refuse(routing, "no " + stage + " replica " + std::to_string(hello.getReplica()) + " in this pipeline's plan");
}

void Coordinator::refuse(const std::string& routing, const std::string& why) {
  dropped_.write("a hello: " + why);
  wire::Outgoing refused;
  refused.header().getBody().initRefused().setReason(why);
  zmq::message_t id(routing.data(), routing.size());
  try_send_parts(router_, refused.parts(), &id);
}

void Coordinator::on_embeddings(Slot& slot, wire::Incoming& message) {
  slot.outstanding.erase(message.request_id());
  Request* request = find(message.request_id(), message.attempt());
  if (!request || request->stage != Stage::kInVision) return;
  if (message.frames().size() != request->images.size()) {
    finish(*request, "vision stage: " + std::to_string(message.frames().size()) +
                         " embeddings for " + std::to_string(request->images.size()) + " images");
    return;
  }
  for (const auto& frame : message.frames()) {
    if (frame.shape.size() != 2 || frame.shape[0] != model_.image_tokens() ||
        frame.shape[1] != model_.text.hidden_size) {
      finish(*request, "vision stage: embeddings of an unexpected shape");
      return;
    }
  }
  cache_.put(request->images, request->image_hashes, message.frames());
  const auto done = message.header().getBody().getEmbeddings();
  request->encode_ms = 1e3 * done.getEncodeSeconds();
  request->preprocess_ms = 1e3 * done.getPreprocessSeconds();
  request->vision_batch_images = static_cast<int>(done.getBatchImages());
  request->vision_worker = slot.name;
  try {
    put_embeddings(*request, std::move(message.frames()));  // the frames as they came
  } catch (const RequestError& e) {
    finish(*request, e.what());
  }
}

bool Coordinator::take_from_cache(Request& request) {
  if (request.stage != Stage::kNeedVision || !cache_.enabled()) return false;
  auto frames = cache_.find(request.images, request.image_hashes);
  if (!frames) return false;
  try {
    put_embeddings(request, std::move(*frames));
  } catch (const RequestError&) {
    return false;  // cannot keep them now (a failed spill): the vision stage says so
  }
  request.cached_images = static_cast<int>(request.images.size());
  return true;
}

bool Coordinator::ready_for_vision(Request& request,
                                   const std::unordered_multiset<size_t>& encoding) {
  if (take_from_cache(request)) return false;
  if (!cache_.enabled()) return true;
  // The same image in another request, being encoded now: its embeddings will be in the
  // cache, so wait for them rather than encode the image again.
  return std::none_of(request.image_hashes.begin(), request.image_hashes.end(),
                      [&](size_t hash) { return encoding.count(hash) > 0; });
}

std::unordered_multiset<size_t> Coordinator::images_in_vision() const {
  std::unordered_multiset<size_t> out;
  for (const auto& [id, r] : requests_) {
    if (r.stage == Stage::kInVision) out.insert(r.image_hashes.begin(), r.image_hashes.end());
  }
  return out;
}

void Coordinator::put_embeddings(Request& request, std::vector<wire::Frame> frames) {
  request.embedding_bytes = 0;
  for (const auto& frame : frames) request.embedding_bytes += frame.bytes.size();
  try {
    embeddings_.put(request.id, std::move(frames));
  } catch (const std::runtime_error& e) {  // a spill that failed (disk full): this request
    throw RequestError(std::string("embeddings: ") + e.what());
  }
  request.stage = Stage::kNeedLanguage;
  request.slot = -1;
  request.embedded = Clock::now();
}

void Coordinator::on_tokens(wire::Incoming& message) {
  Request* request = find(message.request_id(), message.attempt());
  if (!request || request->stage != Stage::kInLanguage) return;
  auto chunk = message.header().getBody().getTokenChunk();
  size_t index = chunk.getFirstIndex();
  std::string fresh;
  for (int32_t token : chunk.getTokenIds()) {
    // Tokens this request already has (a resumed attempt repeats none, but be exact).
    if (index++ < request->tokens.size()) continue;
    request->tokens.push_back(token);
    fresh += request->detokenizer->push(token);
  }
  if (request->first_token.time_since_epoch().count() == 0) request->first_token = Clock::now();
  const std::string streamable = request->text.push(fresh);
  if (request->text.stopped()) {  // a stop string: the answer is complete
    cancel_at_worker(*request);
    finish(*request, "", "stop");  // streams what is left, then answers
  } else if (!streamable.empty() && events_.on_text) {
    events_.on_text(request->id, streamable);  // last: it may cancel the request
  }
}

void Coordinator::on_done(wire::Incoming& message) {
  Request* request = find(message.request_id(), message.attempt());
  if (!request || request->stage != Stage::kInLanguage) return;
  finish(*request, "", reason_name(message.header().getBody().getDone().getReason()));
}

void Coordinator::on_failure(Slot& slot, wire::Incoming& message) {
  auto failure = message.header().getBody().getFailure();
  const std::string text = failure.getMessage();
  if (message.request_id() == 0) {  // the worker itself cannot work: nothing will run
    if (!failure.getRetryable()) fatal_ = slot.name + ": " + text;
    return;
  }
  slot.outstanding.erase(message.request_id());
  Request* request = find(message.request_id(), message.attempt());
  if (!request) return;
  if (failure.getRetryable()) {
    requeue(*request, slot.name + ": " + text);
  } else {
    finish(*request, slot.stage + " stage: " + text, "",
           failure.getBadRequest() ? ErrorKind::kBadRequest : ErrorKind::kInternal);
  }
}

// ---------------------------------------------------------------- supervision --------

void Coordinator::record(const Slot& slot, const std::string& what, const std::string& detail,
                         double wait_seconds) {
  LeaseEvent event{std::chrono::duration<double>(Clock::now() - started_).count(), slot.device,
                   slot.name, what, detail, wait_seconds};
  timeline_.push_back(event);
  if (events_.on_lease_event) events_.on_lease_event(event);
}

void Coordinator::start_worker(Slot& slot) {
  slot.pid = start_process(worker_program_,
                           {"--config", config_.path, "--stage", slot.stage, "--replica",
                            std::to_string(slot.replica), "--endpoint", endpoint_},
                           {std::string(kSecretVariable) + "=" + secret_});
  slot.state = SlotState::kStarting;
  take_back(slot, "restarted");
  slot.last_seen = Clock::now();
  record(slot, "started", "pid " + std::to_string(slot.pid));
}

void Coordinator::reap() {
  while (auto status = reap_any()) {
    if (killed_.erase(status->pid)) continue;  // its death was already handled
    for (auto& slot : slots_) {
      if (slot.pid == status->pid) exited(slot, *status);
    }
  }
}

void Coordinator::exited(Slot& slot, const ExitStatus& status) {
  if (slot.exit_expected && status.code == 0) {
    slot.pid = -1;
    slot.state = SlotState::kDown;
    take_back(slot, "exited");
    record(slot, "exited");
  } else if (status.code == kExitUsage) {
    fatal_ = slot.name + " " + status.description + ": its command line or config was refused";
  } else if (status.code == 127) {  // exec failed: restarting cannot help
    fatal_ = slot.name + ": cannot start the worker program " + worker_program_;
  } else {
    slot.pid = -1;  // already gone: nothing to kill
    worker_died(slot, status.description);
  }
}

void Coordinator::check_liveness() {
  const auto now = Clock::now();
  const auto limit = beat_interval_ * config_.coordinator.liveness;
  for (auto& slot : slots_) {
    if (slot.state == SlotState::kDown) continue;
    const auto silent = now - slot.last_seen;
    if (slot.state == SlotState::kStarting ? silent > kStartupGrace : silent > limit) {
      worker_died(slot, "no heartbeat for " +
                            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()) +
                            " ms");
    }
  }
}

void Coordinator::heartbeat() {
  if (Clock::now() - last_heartbeat_ < beat_interval_) return;
  last_heartbeat_ = Clock::now();
  for (auto& slot : slots_) {
    if (slot.routing.empty() || slot.state == SlotState::kDown || slot.exit_expected) continue;
    wire::Outgoing beat;
    beat.header().getBody().initHeartbeat();
    send(slot, beat);
  }
}

void Coordinator::worker_died(Slot& slot, const std::string& reason) {
  record(slot, "died", reason);
  if (slot.pid > 0) {
    kill(slot.pid, SIGKILL);  // a stalled process must not come back with stale replies
    killed_.insert(slot.pid);
  }
  slot.pid = -1;
  slot.state = SlotState::kDown;
  slot.down_since = Clock::now();
  take_back(slot, reason);
  const auto now = Clock::now();
  slot.deaths.push_back(now);
  slot.last_death = reason;
  ++slot.report.restarts;
  // Back off: 100 ms, 200 ms, ... up to 5 s between restarts.
  const auto backoff = std::chrono::milliseconds(
      std::min<int64_t>(5000, 100ll << std::min<size_t>(slot.deaths.size() - 1, 6)));
  slot.restart_after = now + backoff;
}

void Coordinator::take_back(Slot& slot, const std::string& reason) {
  slot.routing.clear();
  slot.granted = slot.releasing = slot.exit_expected = false;
  const std::set<uint64_t> held = slot.outstanding;
  slot.outstanding.clear();
  for (uint64_t id : held) {
    auto it = requests_.find(id);
    if (it != requests_.end()) requeue(it->second, slot.name + " " + reason);
  }
}

bool Coordinator::over_restart_budget(Slot& slot, std::string* why) {
  // An external slot never is: its worker may come back at any time, and its requests wait
  // for it or for another replica (up to coordinator.external_wait).
  if (slot.external) return false;
  const auto window = std::chrono::milliseconds(config_.coordinator.restart_window_ms);
  const auto now = Clock::now();
  while (!slot.deaths.empty() && now - slot.deaths.front() > window) slot.deaths.pop_front();
  if (static_cast<int>(slot.deaths.size()) <= config_.coordinator.max_restarts_per_minute) return false;
  *why = slot.name + " failed " + std::to_string(slot.deaths.size()) + " times in " +
         format_millis(static_cast<int64_t>(config_.coordinator.restart_window_ms)) + " (last: " +
         slot.last_death + "); it is started again once fewer than " +
         std::to_string(config_.coordinator.max_restarts_per_minute + 1) +
         " failures fall in that window (coordinator.max_restarts_per_minute, restart_window)";
  return true;
}

bool Coordinator::stage_broken(const std::string& stage, std::string* why) {
  const auto wait = std::chrono::milliseconds(config_.coordinator.external_wait_ms);
  const auto now = Clock::now();
  // Broken when every replica is: over its restart budget, or external and unregistered
  // for longer than external_wait.
  for (auto& slot : slots_) {
    if (slot.stage != stage || over_restart_budget(slot, why)) continue;
    if (!(slot.external && slot.state == SlotState::kDown && wait.count() > 0 &&
          now - slot.down_since > wait)) {
      return false;
    }
    *why = "no worker registered as " + slot.name + " for " + format_millis(wait.count()) +
           " (launch: external: a cluster manager must start `llava-stage --stage " + slot.stage +
           " --replica " + std::to_string(slot.replica) + "`; coordinator.external_wait)";
  }
  return true;
}

void Coordinator::shutdown_workers() {
  // Take the leases back first (workers report their load and work time and peak memory
  // with the release), waiting a bounded time; then stop every process.
  for (auto& slot : slots_) {
    // External workers stay up for the next coordinator: they only give the device back.
    if (slot.granted && !slot.releasing && !slot.routing.empty()) {
      release(slot, slot.external ? Release::kUnload : Release::kExit);
    }
  }
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  auto releasing = [&] {
    return std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.releasing; });
  };
  while (releasing() && Clock::now() < deadline) receive(std::chrono::milliseconds(50));
  for (auto& slot : slots_) {
    if (slot.pid <= 0) continue;
    if (!slot.routing.empty()) {
      wire::Outgoing stop;
      stop.header().getBody().initShutdown().setReason("coordinator shutting down");
      send(slot, stop);
    }
  }
  for (auto& slot : slots_) {
    if (slot.pid <= 0) continue;
    stop_process(slot.pid, 2000);
    slot.pid = -1;
    slot.state = SlotState::kDown;
  }
  for (pid_t pid : killed_) stop_process(pid, 0);
  killed_.clear();
}

pid_t Coordinator::pid_of(const std::string& process) const {
  for (const auto& slot : slots_) {
    if (slot.name == process) return slot.pid;
  }
  return -1;
}

std::vector<StageReport> Coordinator::reports() const {
  std::vector<StageReport> out;
  for (const auto& slot : slots_) {
    out.push_back(slot.report);
    out.back().tasks = slot.outstanding.size();
  }
  return out;
}

std::string Coordinator::unavailable_reason() {
  if (failed()) return fatal_;
  if (draining_) return "draining";
  for (const char* stage : {"vision", "language"}) {
    std::string why;
    if (stage_broken(stage, &why)) return std::string(stage) + " stage: " + why;
  }
  if (config_.mode == Mode::kSequential) return "";
  for (const char* stage : {"vision", "language"}) {
    bool serving = false;
    const Slot* dead = nullptr;
    for (const auto& slot : slots_) {
      if (slot.stage != stage) continue;
      // Loaded: granted, and a heartbeat since has counted its load time.
      if (slot.state == SlotState::kReady && slot.granted && slot.report.load_seconds > 0) serving = true;
      if (slot.state == SlotState::kDown && !slot.last_death.empty()) dead = &slot;
    }
    if (serving) continue;
    if (dead) {
      return std::string(stage) + " stage: no live worker (" + dead->name + " died: " + dead->last_death +
             "; it is being restarted)";
    }
    return std::string("loading: the ") + stage + " stage's worker is starting or loading its weights";
  }
  return "";
}

StageQueues Coordinator::queues() const {
  StageQueues q;
  for (const auto& [id, r] : requests_) {
    q.vision += r.stage == Stage::kNeedVision;
    q.language += r.stage == Stage::kNeedLanguage;
  }
  return q;
}

// ---------------------------------------------------------------- scheduling ---------

bool Coordinator::send(Slot& slot, wire::Outgoing& message) {
  zmq::message_t id(slot.routing.data(), slot.routing.size());
  const SendResult result = try_send_parts(router_, message.parts(), &id);
  if (result == SendResult::kSent) return true;
  // A full queue to a live worker means "not now": the caller tries again on a later pass
  // (task_limit keeps tasks far below the queue's bound; heartbeats may wait).
  if (result == SendResult::kBusy) return false;
  // A worker told to exit is expected to become unreachable; its exit is reaped.
  if (slot.exit_expected) return false;
  // A process of ours whose socket is gone is most likely ending (the kernel closes its
  // files before it can be reaped): its exit status names the cause better.
  if (slot.pid > 0) {
    if (auto status = wait_exit(slot.pid, 200)) {
      exited(slot, *status);
      return false;
    }
  }
  worker_died(slot, "unreachable");
  return false;
}

bool Coordinator::device_free(const std::string& device) const {
  for (const auto& slot : slots_) {
    if (slot.device == device && (slot.granted || slot.exit_expected)) return false;
  }
  return true;
}

void Coordinator::grant(Slot& slot) {
  const StageSection& stage = slot.stage == "vision" ? config_.vision : config_.language;
  wire::Outgoing message;
  auto body = message.header().getBody().initLeaseGrant();
  body.setDevice(slot.device);
  body.setMemoryLimit(stage.memory_limit);
  body.setEpoch(++slot.epoch);
  if (!send(slot, message)) return;
  slot.granted = true;
  ++slot.report.leases;
  turn_dispatched_ = 0;
  // The lease's wait: since the oldest request that needs this stage began to need it.
  const Stage need = slot.stage == "vision" ? Stage::kNeedVision : Stage::kNeedLanguage;
  double waited = -1;
  const auto now = Clock::now();
  for (const auto& [id, r] : requests_) {
    if (r.stage != need) continue;
    waited = std::max(waited, std::chrono::duration<double>(now - waiting_since(r)).count());
  }
  record(slot, "granted", "", waited);
}

void Coordinator::release(Slot& slot, std::optional<Release> override_how) {
  const Release how = override_how.value_or(
      (slot.stage == "vision" ? config_.vision : config_.language).release);
  wire::Outgoing message;
  auto body = message.header().getBody().initLeaseRelease();
  body.setHow(how == Release::kExit ? schema::ReleaseHow::EXIT : schema::ReleaseHow::UNLOAD);
  body.setEpoch(slot.epoch);
  if (!send(slot, message)) return;
  slot.releasing = true;
  slot.exit_expected = how == Release::kExit;
}

std::unique_ptr<wire::Outgoing> Coordinator::vision_task(const Request& request) {
  auto message = std::make_unique<wire::Outgoing>(request.id, request.attempt);
  message->header().getBody().initVisionTask().setImageCount(
      static_cast<uint32_t>(request.images.size()));
  for (const auto& image : request.images) {
    message->add_frame(wire::DType::kU8, {static_cast<int64_t>(image.size())},
                       zmq::message_t(image.data(), image.size()));
  }
  return message;
}

std::unique_ptr<wire::Outgoing> Coordinator::language_task(const Request& request) {
  auto message = std::make_unique<wire::Outgoing>(request.id, request.attempt);
  auto task = message->header().getBody().initLanguageTask();
  // A resumed request continues from what it has streamed: prompt + those tokens.
  std::vector<int32_t> ids = request.prompt;
  ids.insert(ids.end(), request.tokens.begin(), request.tokens.end());
  auto list = task.initTokenIds(static_cast<unsigned>(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) list.set(static_cast<unsigned>(i), ids[i]);
  task.setResumeFrom(static_cast<uint32_t>(request.tokens.size()));
  SamplingParams sampling = request.spec.generation;  // the request's keys
  sampling.max_new_tokens -= static_cast<int>(request.tokens.size());
  for (int64_t eos : model_.text.eos_token_ids) {
    sampling.stop_token_ids.push_back(static_cast<int32_t>(eos));
  }
  to_wire(sampling, task.initSampling());
  if (!request.images.empty()) {
    for (auto& frame : embeddings_.share(request.id)) message->add_frame(std::move(frame));
  }
  return message;
}

void Coordinator::dispatch(Slot& slot, Request& request, std::unordered_multiset<size_t>& encoding,
                           std::vector<BurstTask>& burst) {
  const size_t slot_index = static_cast<size_t>(&slot - slots_.data());
  const bool vision = request.stage == Stage::kNeedVision;
  if (vision) {
    encoding.insert(request.image_hashes.begin(), request.image_hashes.end());
    // Sent at the pass's end; counted as the worker's now, so that the pass balances
    // replicas with it.
    burst.push_back({slot_index, request.id, vision_task(request)});
  } else if (!send(slot, *language_task(request))) {
    return;
  }
  request.stage = vision ? Stage::kInVision : Stage::kInLanguage;
  request.slot = static_cast<int>(slot_index);
  const auto now = Clock::now();
  if (!request.dispatched) request.dispatched = now;
  if (!vision && !request.handed_off) request.handed_off = now;
  slot.outstanding.insert(request.id);
}

void Coordinator::send_burst(std::vector<BurstTask>& burst) {
  std::map<size_t, uint32_t> remaining;
  for (const auto& task : burst) ++remaining[task.slot];
  for (auto& task : burst) {
    Slot& slot = slots_[task.slot];
    const uint32_t follow = --remaining[task.slot];
    // A worker that died while this burst went out had its requests requeued.
    if (slot.routing.empty() || !slot.outstanding.count(task.request)) continue;
    task.message->header().getBody().getVisionTask().setFollowedBy(follow);
    if (send(slot, *task.message) || slot.routing.empty()) continue;
    // Busy (its queue is full): the request waits for a later pass, as if never sent.
    slot.outstanding.erase(task.request);
    auto it = requests_.find(task.request);
    if (it != requests_.end()) {
      it->second.stage = Stage::kNeedVision;
      it->second.slot = -1;
    }
  }
  burst.clear();
}

void Coordinator::schedule() {
  // A stage that keeps dying fails the requests that need it.
  for (const char* stage : {"vision", "language"}) {
    std::string why;
    if (!stage_broken(stage, &why)) continue;
    const Stage need = std::string(stage) == "vision" ? Stage::kNeedVision : Stage::kNeedLanguage;
    std::vector<uint64_t> doomed;
    for (auto& [id, r] : requests_) {
      if (r.stage == need) doomed.push_back(id);
    }
    for (uint64_t id : doomed) {
      finish(requests_.at(id), std::string(stage) + " stage: " + why, "", ErrorKind::kUnavailable);
    }
  }
  // A request that produced all its tokens before its worker died is complete.
  std::vector<uint64_t> complete;
  for (auto& [id, r] : requests_) {
    if (r.stage == Stage::kNeedLanguage &&
        static_cast<int>(r.tokens.size()) >= r.spec.generation.max_new_tokens) {
      complete.push_back(id);
    }
  }
  for (uint64_t id : complete) finish(requests_.at(id), "", "length");
  if (config_.mode == Mode::kSequential) {
    schedule_sequential();
  } else {
    schedule_concurrent();
  }
}

void Coordinator::schedule_concurrent() {
  const auto now = Clock::now();
  for (auto& slot : slots_) {
    std::string why;
    if (slot.state == SlotState::kDown && !slot.external && now >= slot.restart_after &&
        !over_restart_budget(slot, &why)) {
      start_worker(slot);
    }
    if (slot.state == SlotState::kReady && !slot.granted) grant(slot);
  }
  // Oldest request first, to the least-loaded replica with room.
  std::unordered_multiset<size_t> encoding = images_in_vision();
  std::vector<BurstTask> burst;
  for (auto& [id, request] : requests_) {
    if (request.stage == Stage::kNeedVision && !ready_for_vision(request, encoding)) {
      if (request.stage == Stage::kNeedVision) continue;  // its image is being encoded
    }
    if (request.stage != Stage::kNeedVision && request.stage != Stage::kNeedLanguage) continue;
    const std::string stage = request.stage == Stage::kNeedVision ? "vision" : "language";
    Slot* best = nullptr;
    for (auto& slot : slots_) {
      if (slot.stage != stage || !slot.granted || slot.state != SlotState::kReady) continue;
      if (slot.outstanding.size() >= task_limit(slot)) continue;
      if (!best || slot.outstanding.size() < best->outstanding.size()) best = &slot;
    }
    if (best) dispatch(*best, request, encoding, burst);
  }
  send_burst(burst);
}

void Coordinator::schedule_sequential() {
  // Per stage: the requests that need it, those of them no worker has yet, and how long
  // the oldest of those has waited for it.
  struct Demand {
    size_t total = 0, waiting = 0;
    Clock::duration oldest{0};
  };
  const auto now = Clock::now();
  // Images another request has had encoded since: on to the language stage, with no turn
  // of the vision stage's.
  for (auto& [id, r] : requests_) {
    if (r.stage == Stage::kNeedVision) take_from_cache(r);
  }
  Demand vision_demand, language_demand;
  for (const auto& [id, r] : requests_) {
    const bool vision_stage = r.stage == Stage::kNeedVision || r.stage == Stage::kInVision;
    if (!vision_stage && r.stage != Stage::kNeedLanguage && r.stage != Stage::kInLanguage) continue;
    Demand& d = vision_stage ? vision_demand : language_demand;
    ++d.total;
    if (r.stage != Stage::kNeedVision && r.stage != Stage::kNeedLanguage) continue;
    ++d.waiting;
    d.oldest = std::max(d.oldest, now - waiting_since(r));
  }
  const bool vision_work = vision_demand.total > 0;
  const bool language_work = language_demand.total > 0;
  Slot& vision = slots_[0];
  Slot& language = slots_[1];
  Slot* holder = holder_ == "vision" ? &vision : holder_ == "language" ? &language : nullptr;

  // The holder has given the device back: because it had no work left, or to give way.
  if (holder && !holder->granted && !holder->releasing && !holder->exit_expected &&
      holder->state != SlotState::kStarting && device_free(holder->device) &&
      (giving_way_ || !(holder_ == "vision" ? vision_work : language_work))) {
    const std::string previous = holder_;
    holder_.clear();
    holder = nullptr;
    if (giving_way_) {  // the other stage's turn, though this one may have work again
      giving_way_ = false;
      const bool other_work = previous == "vision" ? language_work : vision_work;
      if (other_work) {
        holder_ = previous == "vision" ? "language" : "vision";
        holder = previous == "vision" ? &language : &vision;
      }
    }
  }
  if (!holder) {
    if (vision_work) {
      holder_ = "vision";
    } else if (language_work) {
      holder_ = "language";
    } else {
      return;
    }
    holder = holder_ == "vision" ? &vision : &language;
  }
  const bool has_work = holder_ == "vision" ? vision_work : language_work;
  std::string why;
  if (holder->state == SlotState::kDown && has_work && !over_restart_budget(*holder, &why) &&
      Clock::now() >= holder->restart_after && device_free(holder->device)) {
    start_worker(*holder);
  }
  if (holder->state == SlotState::kReady && !holder->granted && !holder->releasing && has_work &&
      device_free(holder->device)) {
    grant(*holder);
  }
  if (!holder->granted || holder->releasing) return;
  // Lazy leases: the holder keeps the device while the other stage has nothing waiting (a
  // request whose images are all cached goes straight to a resident language worker). It
  // gives way when it has nothing left to start, or once swap_batch requests wait for the
  // other stage or the oldest has waited swap_after; then it starts nothing new, finishes
  // what it holds and gives the device back.
  const Demand& own = holder_ == "vision" ? vision_demand : language_demand;
  const Demand& other = holder_ == "vision" ? language_demand : vision_demand;
  const Slot& other_slot = holder_ == "vision" ? language : vision;
  const size_t swap_batch = config_.coordinator.swap_batch > 0
                                ? static_cast<size_t>(config_.coordinator.swap_batch)
                                : static_cast<size_t>(other_slot.batch_size);
  // The thresholds count only once the holder has had work in this turn: a stage that has
  // just loaded must not give way before doing anything (two stages would hand the device
  // back and forth while requests age past swap_after).
  const bool give_way =
      other.waiting > 0 &&
      (own.waiting == 0 ||
       (turn_dispatched_ > 0 &&
        (other.waiting >= swap_batch ||
         other.oldest >= std::chrono::milliseconds(config_.coordinator.swap_after_ms))));
  if (!give_way) {
    const Stage need = holder_ == "vision" ? Stage::kNeedVision : Stage::kNeedLanguage;
    std::unordered_multiset<size_t> encoding = images_in_vision();
    std::vector<BurstTask> burst;
    for (auto& [id, request] : requests_) {
      if (holder->outstanding.size() >= task_limit(*holder)) break;
      if (request.stage == Stage::kNeedVision && !ready_for_vision(request, encoding)) continue;
      if (request.stage != need) continue;
      dispatch(*holder, request, encoding, burst);
      turn_dispatched_ += request.stage != need;  // it went to the worker
    }
    send_burst(burst);
  }
  if (give_way && holder->granted && holder->outstanding.empty()) {
    giving_way_ = true;
    release(*holder);
  }
}

}  // namespace llava
