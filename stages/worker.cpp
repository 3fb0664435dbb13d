// The worker's main loop and its handlers.
#include "stages/worker.h"

#include <netdb.h>
#include <unistd.h>

#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <thread>

#include "common/errors.h"
#include "common/plan.h"
#include "common/sampling.h"
#include "common/transport.h"
#include "common/units.h"
#include "stages/device.h"
#include "stages/parallel.h"

namespace llava {
namespace {

std::atomic<int> g_stop{0};  // SIGTERM received

// tcp://HOST:PORT: the host must resolve, or the worker would wait for a coordinator it can
// never reach (ZeroMQ retries the name quietly forever).
void check_host_resolves(const std::string& endpoint) {
  if (endpoint.rfind("tcp://", 0) != 0) return;
  const std::string address = endpoint.substr(6);
  const auto colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "*") return;
  addrinfo* found = nullptr;
  const int error = getaddrinfo(host.c_str(), nullptr, nullptr, &found);
  if (found) freeaddrinfo(found);
  if (error != 0) {
    throw TransportError("cannot reach the coordinator at " + endpoint + ": the host '" + host +
                         "' does not resolve (" + gai_strerror(error) + ")");
  }
}

// An error as one line a user can act on. LibTorch's messages carry a C++ backtrace (26
// frames for an out-of-memory): that goes to this worker's stderr under --verbose only. An
// out-of-memory names what was being done, the allocation, the memory_limit and the knobs.
std::string one_line_error(const std::exception& e, const std::string& who, const std::string& doing,
                           const StageSection& stage) {
  std::string text = e.what();
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) {
    if (std::getenv("LLAVA_PIPE_VERBOSE")) std::cerr << "llava-stage: " << who << ": " << text << "\n";
    text = torch_error->what_without_backtrace();
  }
  if (text.find("out of memory") == std::string::npos) {
    const auto newline = text.find('\n');
    return newline == std::string::npos ? text : text.substr(0, newline);
  }
  std::string allocation;
  const auto tried = text.find("Tried to allocate ");
  if (tried != std::string::npos) allocation = text.substr(tried, text.find('.', tried + 18 + 4) - tried);
  const std::string limit = stage.memory_limit > 0 ? format_bytes(stage.memory_limit) : std::string("none");
  const std::string knobs = stage.name == "vision"
                                ? "lower stages.vision.batch_size, or raise memory_limit"
                                : "lower stages.language.batch_size or max_context, or set quantize: int8 "
                                  "(or int4) or offload: layers, or raise memory_limit";
  return who + ": out of memory " + doing + (allocation.empty() ? "" : " (" + allocation + ")") +
         "; memory_limit " + limit + ": " + knobs;
}

uint64_t random_incarnation() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

at::ScalarType torch_dtype(WeightDType dtype) {
  switch (dtype) {
    case WeightDType::kFloat32: return at::kFloat;
    case WeightDType::kFloat16: return at::kHalf;
    case WeightDType::kBFloat16: return at::kBFloat16;
  }
  return at::kFloat;
}

wire::DType wire_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf ? wire::DType::kF16
         : dtype == at::kBFloat16 ? wire::DType::kBF16 : wire::DType::kF32;
}

at::ScalarType from_wire(wire::DType dtype) {
  return dtype == wire::DType::kF16 ? at::kHalf
         : dtype == wire::DType::kBF16 ? at::kBFloat16 : at::kFloat;
}

// A frame over a contiguous host tensor without copying it: the message keeps the
// tensor's storage alive until ZeroMQ has sent it.
zmq::message_t host_message(const at::Tensor& tensor) {
  auto* owner = new at::Tensor(tensor);
  return zmq::message_t(
      tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()),
      [](void*, void* hint) { delete static_cast<at::Tensor*>(hint); }, owner);
}

schema::FinishReason finish_reason(Finish finish) {
  switch (finish) {
    case Finish::kStop: return schema::FinishReason::EOS;
    case Finish::kCancelled: return schema::FinishReason::CANCELLED;
    default: return schema::FinishReason::LENGTH;
  }
}

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Fault injection for the multi-process tests; every hook is off unless its variable is
// set. LLAVA_PIPE_FAULT_ONCE=PATH makes the error hooks fire only while PATH exists (the
// worker deletes it when one fires), so that a restarted worker runs clean.
struct FaultHooks {
  int work_delay_ms = number("LLAVA_PIPE_FAULT_WORK_DELAY_MS");        // each work step slower
  int sticky_after_steps = number("LLAVA_PIPE_FAULT_STICKY_AFTER_STEPS");  // then a sticky error
  int oom_prompt_tokens = number("LLAVA_PIPE_FAULT_OOM_PROMPT_TOKENS");    // prompts this long OOM
  int oom_at_load = number("LLAVA_PIPE_FAULT_OOM_AT_LOAD");                // loading OOMs
  // Messages taken one at a time, as if each arrived just after the worker started working.
  int one_message_per_step = number("LLAVA_PIPE_FAULT_ONE_MESSAGE_PER_STEP");
  // "ID:N": a first attempt's token number N is reported as ID (as if sampled), e.g. the
  // image token, to test what a resumed request does with it.
  int forced_token = pair("LLAVA_PIPE_FAULT_FORCE_TOKEN", 0);
  int forced_index = pair("LLAVA_PIPE_FAULT_FORCE_TOKEN", 1);
  static int pair(const char* name, int part) {
    const char* value = std::getenv(name);
    if (!value || !std::strchr(value, ':')) return -1;
    return std::atoi(part == 0 ? value : std::strchr(value, ':') + 1);
  }
  static int number(const char* name) {
    const char* value = std::getenv(name);
    return value ? std::atoi(value) : 0;
  }
  static bool armed() {
    const char* once = std::getenv("LLAVA_PIPE_FAULT_ONCE");
    if (!once) return true;
    return std::remove(once) == 0;  // fires once: the first to delete the file
  }
};

// The longest a vision worker waits for the next task of an announced burst (they are sent
// back to back; this only bounds a burst cut short, by a cancel or a dead coordinator).
constexpr std::chrono::milliseconds kBurstGap{50};

const FaultHooks& faults() {
  static const FaultHooks hooks;
  return hooks;
}

// Errors after which a CUDA context is unusable: the process must end and be restarted.
bool is_sticky(const std::exception& e) {
  const std::string what = e.what();
  for (const char* sign : {"illegal memory access", "device-side assert", "unspecified launch failure",
                           "misaligned address", "illegal instruction"}) {
    if (what.find(sign) != std::string::npos) return true;
  }
  return false;
}

[[noreturn]] void exit_after_sticky_error(const std::exception& e) {
  std::cerr << "llava-stage: unrecoverable device error, exiting so that a fresh process takes "
               "over: " << e.what() << std::endl;
  std::_Exit(kExitRuntime);  // no destructors: they would touch the broken context
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
      stage_(options_.stage == "vision" ? &config_.vision : &config_.language),
      stage_kind_(options_.stage == "vision" ? schema::Stage::VISION : schema::Stage::LANGUAGE),
      device_(stage_->devices[static_cast<size_t>(options_.replica) % stage_->devices.size()]),
      tensor_options_(at::TensorOptions().dtype(torch_dtype(config_.model.dtype)).device(device_)),
      secret_(std::getenv("LLAVA_PIPE_WORKER_SECRET") ? std::getenv("LLAVA_PIPE_WORKER_SECRET") : ""),
      incarnation_(random_incarnation()),
      beat_interval_(config_.coordinator.heartbeat_interval_ms) {
  if (options_.stage != "vision" && options_.stage != "language") {
    throw ConfigError("--stage must be vision or language, got '" + options_.stage + "'");
  }
  limits_.max_message_bytes = config_.coordinator.max_message_size;
  const TransportOptions transport = transport_options(
      config_.coordinator, config_.coordinator.curve_worker_key, config_.coordinator.curve_server_key);
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

void Worker::request_stop() { ++g_stop; }

bool Worker::send(wire::Outgoing& message) {
  std::lock_guard<std::mutex> lock(socket_mutex_);
  bool sent = send_parts(socket_, message.parts());
  if (!sent) std::cerr << "llava-stage: a message to the coordinator could not be queued\n";
  return sent;
}

void Worker::send_heartbeat() {
  wire::Outgoing beat;
  auto body = beat.header().getBody().initHeartbeat();
  body.setState(state_ == State::kLeased ? schema::WorkerState::LEASED : schema::WorkerState::READY);
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
  if (generator_) {
    kv_slots_used_ = static_cast<uint32_t>(generator_->active());
    kv_slots_ = static_cast<uint32_t>(generator_->slots());
  } else {
    kv_slots_used_ = kv_slots_ = 0;
  }
  send_heartbeat();
}

void Worker::pulse() {
  std::unique_lock<std::mutex> lock(pulse_mutex_);
  while (!pulse_wake_.wait_for(lock, beat_interval_, [this] { return pulse_stop_; })) {
    if (working_ && registered_) send_heartbeat();
  }
}

void Worker::fail(uint64_t request, uint32_t attempt, const std::string& message, bool retryable,
                  bool bad_request) {
  wire::Outgoing out(request, attempt);
  auto failure = out.header().getBody().initFailure();
  failure.setStage(stage_kind_);
  failure.setMessage(message);
  failure.setRetryable(retryable);
  failure.setBadRequest(bad_request);
  send(out);
}

void Worker::hello() {
  wire::Outgoing hello;
  auto body = hello.header().getBody().initHello();
  body.setStage(stage_kind_);
  body.setDevice(device_.str());
  body.setPid(static_cast<uint32_t>(getpid()));
  body.setReplica(static_cast<uint32_t>(options_.replica));
  body.setSecret(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(secret_.data()), secret_.size()));
  body.setIncarnation(incarnation_);
  send(hello);
  registered_ = false;  // until the coordinator says anything else
}

void Worker::lost_coordinator() {
  // Its work is requeued by whichever coordinator answers next; the device goes back now.
  queue_.clear();
  if (generator_) {
    for (const auto& [id, run] : running_) generator_->cancel(id);
  }
  running_.clear();
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
  while (exit_code_ < 0) {
    const bool busy = state_ == State::kLeased && (!queue_.empty() || !running_.empty());
    auto wait = busy ? burst_wait() : beat_interval_ / 2;
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
        wire::Incoming message = wire::Incoming::parse(std::move(*parts), false, limits_);
        handle(message);
      } catch (const WireError& e) {
        dropped_.write(std::string("a malformed message: ") + e.what());
      }
      wait = burst_wait();
      if (faults().one_message_per_step > 0 && wait.count() == 0) break;
    }
    if (exit_code_ >= 0) break;
    if (auto refused = handshake_.failure()) {
      std::cerr << "llava-stage: cannot register with the coordinator: " << *refused
                << " (check coordinator.curve: this worker's key must be allowed, and the server key "
                   "must be the coordinator's)\n";
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
                << (stage_->external ? "freeing the device and registering again\n" : "exiting\n");
      // A worker the coordinator started ends with it; one a cluster manager started
      // waits for the next coordinator (or this one, back from a stall).
      if (!stage_->external) return 1;
      lost_coordinator();
    }
    if (state_ == State::kLeased) {
      working_ = true;
      work();
      working_ = false;
    }
  }
  return exit_code_;
}

void Worker::handle(wire::Incoming& message) {
  using W = schema::Header::Body::Which;
  auto body = message.header().getBody();
  if (message.kind() != W::NOT_REGISTERED && message.kind() != W::REFUSED) registered_ = true;
  switch (message.kind()) {
    case W::HEARTBEAT: break;  // last_heard_ is enough
    case W::LEASE_GRANT: on_lease_grant(body.getLeaseGrant()); break;
    case W::LEASE_RELEASE:
      on_lease_release(body.getLeaseRelease().getHow(), body.getLeaseRelease().getEpoch());
      break;
    case W::VISION_TASK:
      burst_following_ = body.getVisionTask().getFollowedBy();
      burst_deadline_ = Clock::now() + kBurstGap;
      queue_.push_back(std::move(message));
      break;
    case W::LANGUAGE_TASK: queue_.push_back(std::move(message)); break;
    case W::CANCEL: on_cancel(message.request_id()); break;
    case W::SHUTDOWN: exit_code_ = 0; break;
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
      if (!stage_->external) {
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
      dropped_.write(std::string("a ") + wire::kind_name(message.kind()) + " message (not for a worker)");
  }
}

void Worker::on_lease_grant(const schema::LeaseGrant::Reader& grant) {
  if (state_ == State::kLeased) return;
  const auto start = Clock::now();
  try {
    if (faults().oom_at_load && FaultHooks::armed()) {
      TORCH_CHECK(false, "CUDA out of memory. Tried to allocate 86.00 MiB. (injected by LLAVA_PIPE_FAULT_OOM_AT_LOAD)");
    }
    require_capability(device_, config_.model.dtype);
    initialize_device(device_);
    // memory_limit bounds the whole process on the device (what NVML shows): the allocator
    // gets what the CUDA context leaves.
    const uint64_t limit = grant.getMemoryLimit();
    limit_device_memory(device_, limit > 2 * kCudaRuntimeBytes ? limit - kCudaRuntimeBytes : limit);
    reset_peak_memory(device_);
    checkpoint_ = std::make_unique<Checkpoint>(config_.model.checkpoint);
    checkpoint_->on_tensor_loaded([this] { heartbeat_if_due(); });
    if (stage_kind_ == schema::Stage::VISION) {
      vision_ = std::make_unique<VisionEncoder>(model_, *checkpoint_, tensor_options_, stage_->cuda_graphs);
      // A long-lived worker warms every batch shape once; in sequential mode each round
      // loads anew and its batches are mostly full ones (measured: warming takes ~1.3 s).
      if (config_.mode == Mode::kConcurrent) vision_->warm_up(stage_->batch_size);
    } else {
      const LanguageLayout layout = language_layout(config_, model_);
      decoder_ = std::make_unique<LlamaDecoder>(
          model_, *checkpoint_, tensor_options_,
          WeightPlacement{config_.language.quantize, layout.embeddings_on_host, layout.resident_layers});
      // Loading's temporaries (float16 parts, float32 copies for quantizing) leave cached
      // blocks of odd sizes; give them back before the KV cache takes its share.
      release_cached_memory(device_);
      generator_ = std::make_unique<Generator>(*decoder_, stage_->batch_size,
                                               context_tokens(config_, model_),
                                               stage_->prefill_chunk, stage_->cuda_graphs);
    }
    checkpoint_->release_staging();
    synchronize(device_);
  } catch (const std::exception& e) {
    // Nothing can run without the model: say why, and exit non-zero.
    fail(0, 0, "cannot load the " + options_.stage + " stage: " + one_line_error(e, who(), "while loading", *stage_),
         false);
    exit_code_ = 1;
    return;
  }
  load_seconds_ = load_seconds_ + seconds(Clock::now() - start);
  state_ = State::kLeased;
  last_beat_sent_ = {};  // announce the new state now
  heartbeat_if_due();
}

void Worker::unload() {
  generator_.reset();
  decoder_.reset();
  vision_.reset();
  checkpoint_.reset();
  release_cached_memory(device_);
}

void Worker::on_lease_release(schema::ReleaseHow how, uint64_t epoch) {
  // Work not yet started goes back to the coordinator, which requeues it.
  for (auto& task : queue_) fail(task.request_id(), task.attempt(), "lease released", true);
  queue_.clear();
  for (auto& [id, run] : running_) fail(id, run.attempt, "lease released", true);
  running_.clear();
  const DeviceMemory memory = device_memory(device_);
  if (how == schema::ReleaseHow::UNLOAD) unload();
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

void Worker::on_cancel(uint64_t request) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->request_id() == request) {
      queue_.erase(it);
      return;
    }
  }
  if (generator_ && generator_->cancel(request)) running_.erase(request);
}

std::chrono::milliseconds Worker::burst_wait() const {
  if (burst_following_ == 0) return std::chrono::milliseconds(0);
  size_t images = 0;
  for (const auto& task : queue_) images += task.frames().size();
  if (images >= static_cast<size_t>(stage_->batch_size)) return std::chrono::milliseconds(0);
  const auto left = burst_deadline_ - Clock::now();
  if (left <= Clock::duration::zero()) return std::chrono::milliseconds(0);
  return std::chrono::ceil<std::chrono::milliseconds>(left);
}

void Worker::work() {
  if (faults().work_delay_ms > 0 && (!queue_.empty() || !running_.empty())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(faults().work_delay_ms));
  }
  const auto start = Clock::now();
  if (stage_kind_ == schema::Stage::VISION) {
    encode_images();
  } else {
    generate_tokens();
  }
  work_seconds_ = work_seconds_ + seconds(Clock::now() - start);
}

void Worker::encode_images() {
  if (queue_.empty()) return;
  const auto start = Clock::now();
  // Whole tasks, up to batch_size images (at least one task).
  std::vector<wire::Incoming> tasks;
  size_t images = 0;
  while (!queue_.empty() &&
         (tasks.empty() || images + queue_.front().frames().size() <= static_cast<size_t>(stage_->batch_size))) {
    images += queue_.front().frames().size();
    tasks.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  // Decode and preprocess every image of the batch in parallel, on threads of our own
  // (one per core, up to one per image): on the host this is most of the vision stage's
  // time.
  struct Item {
    size_t task, frame;
    std::string error;
  };
  std::vector<Item> items;
  for (size_t t = 0; t < tasks.size(); ++t) {
    for (size_t i = 0; i < tasks[t].frames().size(); ++i) items.push_back({t, i, {}});
  }
  at::Tensor batch = vision_->pixel_batch(static_cast<int64_t>(items.size()));  // row j: item j
  run_parallel(items.size(), [&](size_t j) {
    Item& item = items[j];
    const auto& frame = tasks[item.task].frames()[item.frame].bytes;
    try {
      vision_->pixels_into(static_cast<const uint8_t*>(frame.data()), frame.size(),
                           batch[static_cast<int64_t>(j)]);
    } catch (const RequestError& e) {
      item.error = "image " + std::to_string(item.frame + 1) + " of " +
                   std::to_string(tasks[item.task].frames().size()) + ": " + e.what();
    }
  });
  // A task with a bad image fails alone; the others go on.
  std::vector<bool> failed(tasks.size(), false);
  for (const auto& item : items) {
    if (!item.error.empty() && !failed[item.task]) {
      failed[item.task] = true;
      fail(tasks[item.task].request_id(), tasks[item.task].attempt(), item.error, false, true);
    }
  }
  std::vector<int64_t> rows;  // of the tasks that go on, in task order, then frame order
  std::vector<size_t> first_row(tasks.size(), 0);
  for (size_t j = 0; j < items.size(); ++j) {
    if (failed[items[j].task]) continue;
    if (items[j].frame == 0) first_row[items[j].task] = rows.size();
    rows.push_back(static_cast<int64_t>(j));
  }
  if (rows.empty()) return;
  if (rows.size() < items.size()) batch = batch.index_select(0, at::tensor(rows));
  const auto prepared = Clock::now();
  at::Tensor embeddings;
  try {
    // [N, tokens, H], copied to the host at once: into pinned memory on CUDA (the fast
    // copy), which the frames then send without another copy.
    embeddings = vision_->encode(batch);
    const auto encoded = Clock::now();
    at::Tensor host = at::empty(embeddings.sizes(), embeddings.options().device(at::kCPU).pinned_memory(embeddings.is_cuda()));
    embeddings = host.copy_(embeddings);
    if (std::getenv("LLAVA_PIPE_TRACE_VISION") != nullptr) {  // where a batch's time goes
      std::fprintf(stderr, "vision batch of %zu: host %.1f ms, encode %.1f ms, to host %.1f ms\n",
                   rows.size(), 1e3 * seconds(prepared - start), 1e3 * seconds(encoded - prepared),
                   1e3 * seconds(Clock::now() - encoded));
    }
  } catch (const c10::Error& e) {
    if (is_sticky(e)) exit_after_sticky_error(e);
    for (size_t t = 0; t < tasks.size(); ++t) {
      if (failed[t]) continue;
      fail(tasks[t].request_id(), tasks[t].attempt(),
           "vision encoder: " + one_line_error(e, who(), "encoding a batch of " + std::to_string(rows.size()) + " images",
                                               *stage_),
           false);
    }
    return;
  }
  const double elapsed = seconds(Clock::now() - start);
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (failed[t]) continue;
    wire::Outgoing out(tasks[t].request_id(), tasks[t].attempt());
    auto body = out.header().getBody().initEmbeddings();
    body.setImageCount(static_cast<uint32_t>(tasks[t].frames().size()));
    body.setEncodeSeconds(elapsed);
    body.setPreprocessSeconds(seconds(prepared - start));
    body.setBatchImages(static_cast<uint32_t>(rows.size()));
    for (size_t i = 0; i < tasks[t].frames().size(); ++i) {
      at::Tensor image = embeddings[static_cast<int64_t>(first_row[t] + i)];
      out.add_frame(wire_dtype(image.scalar_type()), image.sizes().vec(), host_message(image));
    }
    send(out);
  }
}

void Worker::admit(wire::Incoming& task) {
  auto body = task.header().getBody().getLanguageTask();
  std::vector<int32_t> ids;
  for (int32_t id : body.getTokenIds()) ids.push_back(id);
  std::vector<at::Tensor> images;
  for (auto& frame : task.frames()) {
    if (frame.dtype == wire::DType::kU8 || frame.shape.size() != 2) {
      throw RequestError("embedding frames must be [tokens, hidden] floats");
    }
    images.push_back(at::from_blob(frame.bytes.data(), frame.shape, from_wire(frame.dtype)));
  }
  const SamplingParams params = from_wire(body.getSampling());
  if (faults().oom_prompt_tokens > 0 && static_cast<int>(ids.size()) >= faults().oom_prompt_tokens &&
      FaultHooks::armed()) {
    TORCH_CHECK(false, "CUDA out of memory. Tried to allocate 20.00 MiB. (injected by LLAVA_PIPE_FAULT_OOM_PROMPT_TOKENS)");
  }
  // Tokens an earlier attempt generated continue the prompt; only the prompt's own image
  // tokens are placeholders (a generated id equal to the image token is text).
  if (body.getResumeFrom() > ids.size()) {
    throw RequestError("resumes from token " + std::to_string(body.getResumeFrom()) + " of a prompt of " +
                       std::to_string(ids.size()));
  }
  const size_t placeholders_end = ids.size() - body.getResumeFrom();
  Running run{task.attempt(), body.getResumeFrom(), static_cast<uint32_t>(ids.size()), 0,
              Clock::now()};
  TokenEvent first = generator_->start(task.request_id(), ids, images, params, placeholders_end);
  run.prefill_seconds = seconds(Clock::now() - run.started);
  running_[task.request_id()] = run;
  emit(first);
}

void Worker::emit(const TokenEvent& event) {
  Running& run = running_.at(event.id);
  wire::Outgoing chunk(event.id, run.attempt);
  auto body = chunk.header().getBody().initTokenChunk();
  int32_t token = event.token;
  if (faults().forced_token >= 0 && run.attempt == 0 &&
      static_cast<int>(run.first_index + run.generated) == faults().forced_index) {
    token = faults().forced_token;
  }
  body.initTokenIds(1).set(0, token);
  body.setFirstIndex(run.first_index + run.generated);
  ++run.generated;
  send(chunk);
  if (event.finish == Finish::kNone) return;
  wire::Outgoing done(event.id, run.attempt);
  auto d = done.header().getBody().initDone();
  d.setReason(finish_reason(event.finish));
  d.setPromptTokens(run.prompt_tokens);
  d.setGeneratedTokens(run.first_index + run.generated);
  d.setPrefillSeconds(run.prefill_seconds);
  d.setDecodeSeconds(seconds(Clock::now() - run.started) - run.prefill_seconds);
  send(done);
  running_.erase(event.id);
}

void Worker::generate_tokens() {
  while (!queue_.empty() && generator_->has_capacity()) {
    wire::Incoming task = std::move(queue_.front());
    queue_.pop_front();
    try {
      admit(task);
    } catch (const RequestError& e) {
      running_.erase(task.request_id());
      fail(task.request_id(), task.attempt(), e.what(), false, true);
    } catch (const c10::Error& e) {  // out of memory and the like: this request only
      if (is_sticky(e)) exit_after_sticky_error(e);
      running_.erase(task.request_id());
      fail(task.request_id(), task.attempt(),
           "language model: " + one_line_error(e, who(), "prefilling this request's prompt", *stage_), false);
    }
  }
  if (generator_->active() == 0) return;
  std::vector<TokenEvent> events;
  try {
    if (faults().sticky_after_steps > 0 && ++decode_steps_ == faults().sticky_after_steps &&
        FaultHooks::armed()) {
      TORCH_CHECK(false, "CUDA error: an illegal memory access was encountered (injected)");
    }
    events = generator_->step();
  } catch (const std::exception& e) {
    if (is_sticky(e)) exit_after_sticky_error(e);
    // The batch cannot go on; each request is retried from what it has streamed.
    for (auto& [id, run] : running_) {
      generator_->cancel(id);
      fail(id, run.attempt, "decode step failed: " + one_line_error(e, who(), "in a decode step", *stage_), true);
    }
    running_.clear();
    return;
  }
  for (const auto& event : events) emit(event);
}

}  // namespace llava
