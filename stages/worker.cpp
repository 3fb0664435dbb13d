// The worker's main loop and its handlers: registration, heartbeats (the loop's and the
// pulse thread's), the lease, and the hand-off of tasks to the stage (stages/stage.h).
#include "stages/worker.h"

#include <c10/core/InferenceMode.h>
#include <netdb.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <random>
#include <string_view>
#include <thread>

#include "common/errors.h"
#include "common/plan.h"
#include "common/transport.h"
#include "stages/device.h"
#include "stages/fault_hooks.h"

namespace llava {
namespace {

std::atomic<int> g_stop{0};  // SIGTERM received

constexpr std::string_view kTcpScheme = "tcp://";
// With nothing to do the loop wakes twice a heartbeat interval, to beat on time.
constexpr int kIdleWakesPerBeat = 2;

// tcp://HOST:PORT: the host must resolve, or the worker would wait for a coordinator it can
// never reach (ZeroMQ retries the name quietly forever).
void check_host_resolves(const std::string& endpoint) {
  if (endpoint.rfind(kTcpScheme, 0) != 0) return;
  const std::string address = endpoint.substr(kTcpScheme.size());
  const auto colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // an IPv6 address
  }
  if (host.empty() || host == "*") return;
  addrinfo* found = nullptr;
  const int error = getaddrinfo(host.c_str(), nullptr, nullptr, &found);
  if (found) freeaddrinfo(found);
  if (error != 0) {
    throw TransportError("cannot reach the coordinator at " + endpoint + ": the host '" + host +
                         "' does not resolve (" + gai_strerror(error) + ")");
  }
}

uint64_t random_incarnation() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

at::ScalarType torch_dtype(WeightDType dtype) {
  switch (dtype) {
    case WeightDType::kFloat32:
      return at::kFloat;
    case WeightDType::kFloat16:
      return at::kHalf;
    case WeightDType::kBFloat16:
      return at::kBFloat16;
  }
  return at::kFloat;
}

schema::Stage wire_stage(StageKind kind) {
  return kind == StageKind::kVision ? schema::Stage::VISION : schema::Stage::LANGUAGE;
}

const StageSection& section_of(const PipelineConfig& config, StageKind kind) {
  return kind == StageKind::kVision ? config.vision : config.language;
}

// The config as the coordinator runs it: mode auto resolved from the same file and model,
// so both sides choose alike (the mode, the batch, each stage's memory_limit).
PipelineConfig config_to_run(const std::string& path) {
  PipelineConfig config = load_config(path);
  std::string decision;
  return resolve_mode(config, load_llava_config(config.model.checkpoint), &decision);
}

}  // namespace

Worker::Worker(WorkerOptions options)
    : options_(std::move(options)),
      config_(config_to_run(options_.config_path)),
      model_(load_llava_config(config_.model.checkpoint)),
      section_(section_of(config_, options_.stage)),
      device_(section_.devices[static_cast<size_t>(options_.replica) % section_.devices.size()]),
      stage_context_{options_.stage,
                     config_,
                     model_,
                     section_,
                     at::TensorOptions().dtype(torch_dtype(config_.model.dtype)).device(device_),
                     std::string(stage_name(options_.stage)) + "-" +
                         std::to_string(options_.replica) + " on " + device_.str()},
      secret_(std::getenv("LLAVA_PIPE_WORKER_SECRET") ? std::getenv("LLAVA_PIPE_WORKER_SECRET")
                                                      : ""),
      incarnation_(random_incarnation()),
      stage_(make_stage(stage_context_, *this)),
      beat_interval_(config_.coordinator.heartbeat_interval_ms) {
  limits_.max_message_bytes = config_.coordinator.max_message_size;
  shared_maps_ =
      SharedMemoryMaps([device = device_](SharedMemory& m) { pin_for_copies(m, device); });
  const TransportOptions transport =
      transport_options(config_.coordinator, config_.coordinator.curve_worker_key,
                        config_.coordinator.curve_server_key);
  check_host_resolves(options_.endpoint);
  socket_ = connect_dealer(context_, options_.endpoint, transport, &handshake_);
  pulse_thread_ = std::thread([this] { pulse(); });
}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(pulse_mutex_);
    pulse_stop_ = true;
  }
  pulse_wake_.notify_all();
  if (pulse_thread_.joinable()) pulse_thread_.join();
}

void Worker::request_stop() {
  ++g_stop;
}

bool Worker::send(wire::Outgoing& message) {
  std::lock_guard<std::mutex> lock(socket_mutex_);
  bool sent = send_parts(socket_, message.parts());
  if (!sent) std::cerr << "llava-stage: a message to the coordinator could not be queued\n";
  return sent;
}

void Worker::send_heartbeat() {
  wire::Outgoing beat;
  auto body = beat.header().getBody().initHeartbeat();
  body.setState(state_ == State::kLeased ? schema::WorkerState::LEASED
                                         : schema::WorkerState::READY);
  body.setDeviceBytes(device_bytes_);
  body.setPeakDeviceBytes(peak_device_bytes_);
  body.setLoadSeconds(load_seconds_);
  body.setWorkSeconds(work_seconds_);
  body.setKvSlotsUsed(kv_slots_used_);
  body.setKvSlots(kv_slots_);
  body.setAllocatedBytes(allocated_bytes_);
  send(beat);
}

void Worker::heartbeat_if_due() {
  const auto now = Clock::now();
  if (now - last_beat_sent_ < beat_interval_) return;
  last_beat_sent_ = now;
  DeviceMemory memory = device_memory(device_);
  device_bytes_ = static_cast<uint64_t>(memory.current);
  peak_device_bytes_ = static_cast<uint64_t>(memory.peak);
  allocated_bytes_ = static_cast<uint64_t>(memory.allocated);
  const SlotUse slots = stage_->slots();
  kv_slots_used_ = slots.used;
  kv_slots_ = slots.total;
  send_heartbeat();
}

void Worker::pulse() {
  std::unique_lock<std::mutex> lock(pulse_mutex_);
  while (!pulse_wake_.wait_for(lock, beat_interval_, [this] { return pulse_stop_; })) {
    if (working_ && registered_) send_heartbeat();
  }
}

void Worker::fail(uint64_t request, uint32_t attempt, const std::string& message,
                  FailureKind kind) {
  wire::Outgoing out(request, attempt);
  auto failure = out.header().getBody().initFailure();
  failure.setStage(wire_stage(options_.stage));
  failure.setMessage(message);
  failure.setRetryable(kind == FailureKind::kRetryable || kind == FailureKind::kNoSharedMemory);
  failure.setBadRequest(kind == FailureKind::kBadRequest);
  failure.setSharedMemory(kind == FailureKind::kNoSharedMemory);
  send(out);
}

void Worker::hello() {
  wire::Outgoing hello;
  auto body = hello.header().getBody().initHello();
  body.setStage(wire_stage(options_.stage));
  body.setDevice(device_.str());
  body.setPid(static_cast<uint32_t>(getpid()));
  body.setReplica(static_cast<uint32_t>(options_.replica));
  body.setSecret(
      capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(secret_.data()), secret_.size()));
  body.setIncarnation(incarnation_);
  body.setSharedMemoryId(shared_memory_id());
  send(hello);
  registered_ = false;  // until the coordinator says anything else
}

void Worker::lost_coordinator() {
  // Its work is requeued by whichever coordinator answers next; the device goes back now.
  stage_->drop_all(std::nullopt);
  if (state_ == State::kLeased) unload();
  state_ = State::kReady;
  hello();
  last_heard_ = Clock::now();
}

int Worker::run() {
  c10::InferenceMode inference;  // no autograd bookkeeping on any tensor of this process
  hello();
  last_heard_ = last_beat_sent_ = Clock::now();
  const auto silence_limit = beat_interval_ * config_.coordinator.liveness;
  const wire::SharedResolver maps = wire::resolve_through(shared_maps_);
  const wire::SharedResolver shared = [&maps](const schema::Header::Reader& header, uint64_t offset,
                                              uint64_t bytes) {
    if (faults().shared_unreadable > 0) {
      throw SharedMemoryError("shared memory: cannot read (LLAVA_PIPE_FAULT_SHARED_UNREADABLE)",
                              header.getRequestId(), header.getAttempt());
    }
    return maps(header, offset, bytes);
  };
  while (exit_code_ < 0) {
    const bool busy = state_ == State::kLeased && stage_->has_work();
    auto wait = busy ? stage_->wait_for_more() : beat_interval_ / kIdleWakesPerBeat;
    // Take every waiting message before working: cancels and releases act at once. The
    // rest of an announced burst of vision tasks is waited for, to encode it as one batch.
    while (exit_code_ < 0) {
      std::optional<std::vector<zmq::message_t>> parts;
      {
        std::lock_guard<std::mutex> lock(socket_mutex_);
        parts = receive_parts(socket_, wait);
      }
      if (!parts) break;
      last_heard_ = Clock::now();
      try {
        wire::Incoming message = wire::Incoming::parse(std::move(*parts), false, limits_, shared);
        handle(message);
      } catch (const SharedMemoryError& e) {  // the coordinator sends it again, as bytes
        fail(e.request, e.attempt, e.what(), FailureKind::kNoSharedMemory);
      } catch (const WireError& e) {
        dropped_.write(std::string("a malformed message: ") + e.what());
      }
      wait = stage_->wait_for_more();
      if (faults().one_message_per_step > 0 && wait.count() == 0) break;
    }
    if (exit_code_ >= 0) break;
    if (auto refused = handshake_.failure()) {
      std::cerr << "llava-stage: cannot register with the coordinator: " << *refused
                << " (check coordinator.curve: this worker's key must be allowed, and the server "
                   "key must be the coordinator's)\n";
      return kExitRuntime;
    }
    if (g_stop > 0) {  // SIGTERM: a clean stop, the device given back first
      if (state_ == State::kLeased) on_lease_release(schema::ReleaseHow::UNLOAD, 0);
      std::cerr << "llava-stage: stopped by SIGTERM\n";
      return 0;
    }
    if (!registered_ && hello_again_at_ != Clock::time_point{} && Clock::now() >= hello_again_at_) {
      hello_again_at_ = {};
      hello();
    }
    heartbeat_if_due();
    if (Clock::now() - last_heard_ > silence_limit) {
      std::cerr << "llava-stage: no word from the coordinator for "
                << seconds(Clock::now() - last_heard_) << " s; "
                << (section_.external ? "freeing the device and registering again\n" : "exiting\n");
      // A worker the coordinator started ends with it; one a cluster manager started
      // waits for the next coordinator (or this one, back from a stall).
      if (!section_.external) return kExitRuntime;
      lost_coordinator();
    }
    if (state_ == State::kLeased) {
      const PulseWhile pulse(working_);
      work();
    }
  }
  return exit_code_;
}

void Worker::handle(wire::Incoming& message) {
  using W = schema::Header::Body::Which;
  auto body = message.header().getBody();
  if (message.kind() != W::NOT_REGISTERED && message.kind() != W::REFUSED) registered_ = true;
  switch (message.kind()) {
    case W::HEARTBEAT:
      break;  // last_heard_ is enough
    case W::LEASE_GRANT:
      on_lease_grant(body.getLeaseGrant());
      break;
    case W::LEASE_RELEASE:
      on_lease_release(body.getLeaseRelease().getHow(), body.getLeaseRelease().getEpoch());
      break;
    case W::VISION_TASK:
    case W::LANGUAGE_TASK:
      stage_->take(std::move(message));
      break;
    case W::CANCEL:
      stage_->cancel(message.request_id());
      break;
    case W::SHUTDOWN:
      exit_code_ = 0;
      break;
    case W::NOT_REGISTERED:
      // Answers to messages sent before our hello reached it count once.
      if (registered_) {
        std::cerr << "llava-stage: the coordinator does not know this worker; registering again\n";
        lost_coordinator();
      }
      break;
    case W::REFUSED: {
      const std::string why = body.getRefused().getReason();
      // A worker the coordinator started and refused cannot become acceptable: say why
      // and stop. One of a cluster manager tries again once the live holder of its
      // replica may have been declared dead.
      if (!section_.external) {
        std::cerr << "llava-stage: the coordinator refused this worker: " << why << "\n";
        exit_code_ = kExitRuntime;
        break;
      }
      std::cerr << "llava-stage: the coordinator refused this worker for now: " << why << "\n";
      registered_ = false;
      hello_again_at_ = Clock::now() + beat_interval_ * config_.coordinator.liveness;
      last_heard_ = Clock::now();
      break;
    }
    default:
      dropped_.write(std::string("a ") + wire::kind_name(message.kind()) +
                     " message (not for a worker)");
  }
}

void Worker::on_lease_grant(const schema::LeaseGrant::Reader& grant) {
  if (state_ == State::kLeased) return;
  const auto start = Clock::now();
  try {
    if (faults().oom_at_load && FaultHooks::armed()) {
      TORCH_CHECK(false,
                  "CUDA out of memory. Tried to allocate 86.00 MiB. (injected by "
                  "LLAVA_PIPE_FAULT_OOM_AT_LOAD)");
    }
    require_capability(device_, config_.model.dtype);
    initialize_device(device_);
    // memory_limit bounds the whole process on the device (what NVML shows): the allocator
    // gets what the CUDA context leaves.
    const uint64_t limit = grant.getMemoryLimit();
    limit_device_memory(device_, limit > 2 * kCudaRuntimeBytes ? limit - kCudaRuntimeBytes : limit);
    reset_peak_memory(device_);
    const PulseWhile pulse(working_);  // restoring offloaded weights sends no heartbeats itself
    stage_->load();
    synchronize(device_);
  } catch (const std::exception& e) {
    // Nothing can run without the model: say why, and exit non-zero.
    fail(0, 0,
         std::string("cannot load the ") + stage_name(options_.stage) +
             " stage: " + one_line_error(e, stage_context_, "while loading"),
         FailureKind::kFinal);
    exit_code_ = kExitRuntime;
    return;
  }
  load_seconds_ = load_seconds_ + seconds(Clock::now() - start);
  state_ = State::kLeased;
  last_beat_sent_ = {};  // announce the new state now
  heartbeat_if_due();
}

void Worker::unload() {
  stage_->unload();
  release_cached_memory(device_);
}

void Worker::on_lease_release(schema::ReleaseHow how, uint64_t epoch) {
  // Work not yet finished goes back to the coordinator, which requeues it.
  stage_->drop_all(std::string("lease released"));
  const DeviceMemory memory = device_memory(device_);
  if (how == schema::ReleaseHow::UNLOAD) unload();
  if (how == schema::ReleaseHow::OFFLOAD) {
    // The first offload pins host memory for the weights (seconds for a 7B): the pulse
    // thread keeps the heartbeats going meanwhile.
    const PulseWhile pulse(working_);
    stage_->offload();
    release_cached_memory(device_);
  }
  state_ = State::kReady;
  wire::Outgoing out;
  auto released = out.header().getBody().initLeaseReleased();
  released.setEpoch(epoch);
  released.setPeakDeviceBytes(static_cast<uint64_t>(memory.peak));
  released.setLoadSeconds(load_seconds_);
  released.setWorkSeconds(work_seconds_);
  send(out);
  // Ending the process is the only way to also free the CUDA context.
  if (how == schema::ReleaseHow::EXIT) exit_code_ = 0;
}

void Worker::work() {
  if (faults().work_delay_ms > 0 && stage_->has_work()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(faults().work_delay_ms));
  }
  const auto start = Clock::now();
  stage_->work_step();
  work_seconds_ = work_seconds_ + seconds(Clock::now() - start);
}

}  // namespace llava
