// Double-buffered host-to-device layer copies on a side stream, ordered by events.
#include "stages/language/layer_stream.h"

#ifdef LLAVA_PIPE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace llava {

#ifdef LLAVA_PIPE_CUDA
struct LayerStream::Sync {
  explicit Sync(const at::Device& device)
      : side(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}
  c10::cuda::CUDAStream side;
  at::cuda::CUDAEvent ready[2];  // the buffer holds its layer (recorded on the side stream)
  at::cuda::CUDAEvent done[2];   // the compute stream is done with it
};
#else
struct LayerStream::Sync {};
#endif

LayerStream::LayerStream(std::vector<LlamaLayer> host, const at::Device& device)
    : host_(std::move(host)) {
  const size_t buffers = std::min<size_t>(2, host_.size());
  for (size_t b = 0; b < buffers; ++b) {
    buffers_.push_back(host_[b].map([&](const at::Tensor& t) {
      return at::empty(t.sizes(), t.options().device(device).pinned_memory(false));
    }));
  }
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda()) sync_ = std::make_unique<Sync>(device);
#endif
}

LayerStream::~LayerStream() = default;

int64_t LayerStream::device_bytes() const {
  int64_t total = 0;
  for (const auto& b : buffers_) total += b.bytes();
  return total;
}

int64_t LayerStream::host_bytes() const {
  int64_t total = 0;
  for (const auto& l : host_) total += l.bytes();
  return total;
}

void LayerStream::begin() {
#ifdef LLAVA_PIPE_CUDA
  // A pass that threw part-way left work queued on buffers it never released.
  if (sync_) {
    for (size_t b = 0; b < buffers_.size(); ++b) {
      sync_->done[b].record(at::cuda::getCurrentCUDAStream(sync_->side.device_index()));
    }
  }
#endif
  for (size_t j = 0; j < buffers_.size(); ++j) issue(j);
}

void LayerStream::issue(size_t j) {
  const size_t b = buffer_of(j);
  std::vector<at::Tensor> to = buffers_[b].tensors(), from = host_[j].tensors();
#ifdef LLAVA_PIPE_CUDA
  if (sync_) {
    sync_->done[b].block(sync_->side);  // no-op before the buffer's first use
    {
      c10::cuda::CUDAStreamGuard guard(sync_->side);
      for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i], /*non_blocking=*/true);
    }
    sync_->ready[b].record(sync_->side);
    return;
  }
#endif
  for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
}

const LlamaLayer& LayerStream::acquire(size_t j) {
  const size_t b = buffer_of(j);
#ifdef LLAVA_PIPE_CUDA
  if (sync_) sync_->ready[b].block(at::cuda::getCurrentCUDAStream(sync_->side.device_index()));
#endif
  return buffers_[b];
}

void LayerStream::release(size_t j) {
#ifdef LLAVA_PIPE_CUDA
  if (sync_) sync_->done[buffer_of(j)].record(at::cuda::getCurrentCUDAStream(sync_->side.device_index()));
#endif
  if (j + buffers_.size() < host_.size()) issue(j + buffers_.size());
}

}  // namespace llava
