// The vision stage's work: queue VisionTasks, wait for the rest of an announced burst, then
// decode and preprocess a batch of images on host threads, encode it, and send one
// Embeddings message per task.
#include "stages/vision/vision_stage.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "stages/device.h"
#include "stages/fault_hooks.h"
#include "stages/parallel.h"

namespace llava {
namespace {

// The longest a vision worker waits for the next task of an announced burst (they are sent
// back to back; this only bounds a burst cut short, by a cancel or a dead coordinator).
constexpr std::chrono::milliseconds kBurstGap{50};
constexpr double kMillisPerSecond = 1e3;

wire::DType wire_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf       ? wire::DType::kF16
         : dtype == at::kBFloat16 ? wire::DType::kBF16
                                  : wire::DType::kF32;
}

// A frame over a contiguous host tensor without copying it: the message keeps the
// tensor's storage alive until ZeroMQ has sent it.
zmq::message_t host_message(const at::Tensor& tensor) {
  auto* owner = new at::Tensor(tensor);
  return zmq::message_t(
      tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()),
      [](void*, void* hint) { delete static_cast<at::Tensor*>(hint); }, owner);
}

}  // namespace

VisionStage::VisionStage(const StageContext& context, StageSink& sink)
    : context_(context),
      sink_(sink),
      shared_maps_([device = context.tensor_options.device()](SharedMemory& m) {
        pin_for_copies(m, device);
      }) {}

WeightOffload::Visit VisionStage::weights() {
  return [this](const std::function<void(at::Tensor&)>& f) { encoder_->visit_tensors(f); };
}

void VisionStage::load() {
  if (offload_ && offload_->offloaded()) {  // the weights wait in host memory
    restore_weights(*offload_, weights(), context_);
    return;
  }
  checkpoint_ = std::make_unique<Checkpoint>(context_.config.model.checkpoint);
  checkpoint_->on_tensor_loaded([this] { sink_.heartbeat_if_due(); });
  encoder_ = std::make_unique<VisionEncoder>(context_.model, *checkpoint_, context_.tensor_options,
                                             context_.section.cuda_graphs);
  // A long-lived worker warms every batch shape once; in sequential mode each round
  // loads anew and its batches are mostly full ones (measured: warming takes ~1.3 s).
  if (context_.config.mode == Mode::kConcurrent) encoder_->warm_up(context_.section.batch_size);
  checkpoint_->release_staging();
}

void VisionStage::unload() {
  encoder_.reset();
  checkpoint_.reset();
  offload_.reset();
}

void VisionStage::offload() {
  encoder_->forget_graphs();  // captured with the weights' device addresses
  if (!offload_) offload_ = std::make_unique<WeightOffload>();
  offload_weights(*offload_, weights(), context_);
}

void VisionStage::take(wire::Incoming task) {
  if (task.kind() != schema::Header::Body::Which::VISION_TASK) {
    throw WireError(std::string("a ") + wire::kind_name(task.kind()) + " for a vision worker");
  }
  burst_following_ = task.header().getBody().getVisionTask().getFollowedBy();
  const auto now = Clock::now();
  burst_deadline_ = now + kBurstGap;
  queue_.push_back({std::move(task), now});
}

void VisionStage::cancel(uint64_t request) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->task.request_id() == request) {
      queue_.erase(it);
      return;
    }
  }
}

void VisionStage::drop_all(const std::optional<std::string>& reason) {
  if (reason) {
    for (auto& queued : queue_) {
      sink_.fail(queued.task.request_id(), queued.task.attempt(), *reason, FailureKind::kRetryable);
    }
  }
  queue_.clear();
}

std::chrono::milliseconds VisionStage::wait_for_more() const {
  if (burst_following_ == 0) return std::chrono::milliseconds(0);
  size_t images = 0;
  for (const auto& queued : queue_) images += queued.task.frames().size();
  if (images >= static_cast<size_t>(context_.section.batch_size)) {
    return std::chrono::milliseconds(0);
  }
  const auto left = burst_deadline_ - Clock::now();
  if (left <= Clock::duration::zero()) return std::chrono::milliseconds(0);
  return std::chrono::ceil<std::chrono::milliseconds>(left);
}

void VisionStage::work_step() {
  if (queue_.empty()) return;
  const auto start = Clock::now();
  const auto batch_size = static_cast<size_t>(context_.section.batch_size);
  // Whole tasks, up to batch_size images (at least one task).
  std::vector<wire::Incoming> tasks;
  std::vector<double> waited;  // seconds each task was queued here
  size_t images = 0;
  while (!queue_.empty() &&
         (tasks.empty() || images + queue_.front().task.frames().size() <= batch_size)) {
    images += queue_.front().task.frames().size();
    waited.push_back(seconds(start - queue_.front().arrived));
    tasks.push_back(std::move(queue_.front().task));
    queue_.pop_front();
  }
  // Decode and preprocess every image of the batch in parallel, on threads of our own
  // (one per core, up to one per image): on the host this is most of the vision stage's
  // time. Fewer images than cores: each image's preprocessing is split over the cores left
  // (a single image's part of the first token).
  struct Item {
    size_t task, frame;
    std::string error;
    bool bad_request = true;  // the error is the image's own (else the host's)
  };
  std::vector<Item> items;
  for (size_t t = 0; t < tasks.size(); ++t) {
    for (size_t i = 0; i < tasks[t].frames().size(); ++i) items.push_back({t, i, {}, true});
  }
  at::Tensor batch = encoder_->pixel_batch(static_cast<int64_t>(items.size()));  // row j: item j
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads_per_image =
      static_cast<int>(std::max<size_t>(1, cores / std::max<size_t>(1, items.size())));
  run_parallel(items.size(), [&](size_t j) {
    Item& item = items[j];
    const auto& frame = tasks[item.task].frames()[item.frame].bytes;
    const std::string which = "image " + std::to_string(item.frame + 1) + " of " +
                              std::to_string(tasks[item.task].frames().size());
    try {
      if (faults().preprocess_throws && FaultHooks::armed()) {
        throw std::runtime_error(
            "out of host memory (injected by LLAVA_PIPE_FAULT_PREPROCESS_THROWS)");
      }
      encoder_->pixels_into(static_cast<const uint8_t*>(frame.data()), frame.size(),
                            batch[static_cast<int64_t>(j)], threads_per_image);
    } catch (const RequestError& e) {
      item.error = which + ": " + e.what();
    } catch (const std::exception& e) {
      // Out of host memory, no thread to start: this image's task fails, not the worker.
      item.error = which + ": decoding and preprocessing it failed: " + e.what();
      item.bad_request = false;
    }
  });
  // A task with a bad image fails alone; the others go on.
  std::vector<bool> failed(tasks.size(), false);
  for (const auto& item : items) {
    if (!item.error.empty() && !failed[item.task]) {
      failed[item.task] = true;
      sink_.fail(tasks[item.task].request_id(), tasks[item.task].attempt(), item.error,
                 item.bad_request ? FailureKind::kBadRequest : FailureKind::kFinal);
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
  // One answer per task that goes on; its frames are added as its rows reach the host.
  std::vector<std::unique_ptr<wire::Outgoing>> answers(tasks.size());
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (!failed[t])
      answers[t] = std::make_unique<wire::Outgoing>(tasks[t].request_id(), tasks[t].attempt());
  }
  auto rows_of = [&](const at::Tensor& embeddings, size_t t) {
    std::vector<at::Tensor> images;
    for (size_t i = 0; i < tasks[t].frames().size(); ++i) {
      images.push_back(embeddings[static_cast<int64_t>(first_row[t] + i)].contiguous());
    }
    return images;
  };
  try {
    // [N, tokens, H]. A task offered a range of shared memory gets its rows copied straight
    // into it; the others' are copied to the host at once: into pinned memory on CUDA (the
    // fast copy), which their frames then send without another copy.
    const at::Tensor embeddings = encoder_->encode(batch);
    const auto encoded = Clock::now();
    at::Tensor host;
    for (size_t t = 0; t < tasks.size(); ++t) {
      if (failed[t] || write_shared(tasks[t], rows_of(embeddings, t), *answers[t])) continue;
      if (!host.defined()) {
        host = at::empty(embeddings.sizes(),
                         embeddings.options().device(at::kCPU).pinned_memory(embeddings.is_cuda()));
        host.copy_(embeddings);
      }
      for (const auto& image : rows_of(host, t)) {
        answers[t]->add_frame(wire_dtype(image.scalar_type()), image.sizes().vec(),
                              host_message(image));
      }
    }
    if (std::getenv("LLAVA_PIPE_TRACE_VISION") != nullptr) {  // where a batch's time goes
      std::fprintf(stderr, "vision batch of %zu: host %.1f ms, encode %.1f ms, to host %.1f ms\n",
                   rows.size(), kMillisPerSecond * seconds(prepared - start),
                   kMillisPerSecond * seconds(encoded - prepared),
                   kMillisPerSecond * seconds(Clock::now() - encoded));
    }
  } catch (const c10::Error& e) {
    if (is_sticky(e)) exit_after_sticky_error(e);
    const std::string doing = "encoding a batch of " + std::to_string(rows.size()) + " images";
    for (size_t t = 0; t < tasks.size(); ++t) {
      if (failed[t]) continue;
      sink_.fail(tasks[t].request_id(), tasks[t].attempt(),
                 "vision encoder: " + one_line_error(e, context_, doing), FailureKind::kFinal);
    }
    return;
  }
  const double elapsed = seconds(Clock::now() - start);
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (failed[t]) continue;
    wire::Outgoing& out = *answers[t];
    auto body = out.header().getBody().initEmbeddings();
    body.setImageCount(static_cast<uint32_t>(tasks[t].frames().size()));
    body.setEncodeSeconds(elapsed);
    body.setPreprocessSeconds(seconds(prepared - start));
    body.setBatchImages(static_cast<uint32_t>(rows.size()));
    body.setWaitSeconds(waited[t]);
    sink_.send(out);
  }
}

bool VisionStage::write_shared(const wire::Incoming& task, const std::vector<at::Tensor>& images,
                               wire::Outgoing& out) {
  const auto offered = task.header().getBody().getVisionTask();
  uint64_t bytes = 0;
  for (const auto& image : images) bytes += static_cast<uint64_t>(image.nbytes());
  if (offered.getSharedBytes() == 0 || bytes == 0 || bytes > offered.getSharedBytes()) return false;
  std::shared_ptr<SharedMemory> memory;
  try {
    memory = shared_maps_.get(task.header().getSharedMemory());
    if (offered.getSharedOffset() > memory->size() ||
        offered.getSharedBytes() > memory->size() - offered.getSharedOffset()) {
      throw std::runtime_error("the range offered is outside " + memory->path());
    }
  } catch (const std::exception& e) {
    if (!said_shared_failed_) {
      std::cerr << "llava-stage: embeddings go through the socket: " << e.what() << "\n";
      said_shared_failed_ = true;
    }
    return false;
  }
  uint64_t offset = offered.getSharedOffset();
  for (const auto& image : images) {
    const auto n = static_cast<uint64_t>(image.nbytes());
    // From the device straight into the file (registered with CUDA when it was mapped:
    // pin_for_copies), or a copy on the host.
    at::from_blob(memory->data() + offset, image.sizes(), image.options().device(at::kCPU))
        .copy_(image);
    wire::Frame frame =
        wire::shared_frame(memory, offset, wire_dtype(image.scalar_type()), image.sizes().vec());
    frame.shared_offset += static_cast<uint64_t>(faults().shared_offset_lie);
    out.add_frame(std::move(frame));
    offset += n;
  }
  out.send_shared_as_ranges();
  return true;
}

}  // namespace llava
