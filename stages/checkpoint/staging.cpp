// Pinned staging ring (see staging.h).
#include "stages/checkpoint/staging.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "stages/parallel.h"

#ifdef LLAVA_PIPE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace llava {
#ifdef LLAVA_PIPE_CUDA
namespace {

// memcpy, split over threads when large: reading a mapped file is bound by page faults
// and one core's copy rate, not by memory bandwidth.
void parallel_memcpy(void* to, const void* from, size_t bytes) {
  constexpr size_t kPiece = size_t{4} << 20;
  if (bytes <= 2 * kPiece) {
    std::memcpy(to, from, bytes);
    return;
  }
  const size_t pieces = (bytes + kPiece - 1) / kPiece;
  run_parallel(pieces, [&](size_t i) {
    const size_t offset = i * kPiece;
    std::memcpy(static_cast<char*>(to) + offset, static_cast<const char*>(from) + offset,
                std::min(kPiece, bytes - offset));
  });
}

}  // namespace

struct PinnedStaging::Ring {
  struct Buffer {
    at::Tensor memory;         // pinned host bytes
    at::cuda::CUDAEvent done;  // recorded after the copy out of it
    bool used = false;
  };
  std::vector<Buffer> buffers;
  size_t next = 0;
};

PinnedStaging::PinnedStaging(size_t chunk_bytes, int buffers)
    : chunk_bytes_(std::max<size_t>(chunk_bytes, 1)), buffers_(std::max(buffers, 1)) {}

PinnedStaging::~PinnedStaging() {
  if (!ring_) return;
  for (auto& buffer : ring_->buffers) {
    if (buffer.used) buffer.done.synchronize();
  }
}

bool PinnedStaging::available() {
  return true;
}

void PinnedStaging::copy(const void* host, void* destination, size_t bytes,
                         const at::Device& where) {
  const at::Device device =
      where.has_index() ? where : at::Device(at::kCUDA, c10::cuda::current_device());
  const c10::cuda::CUDAGuard guard(device);
  if (!ring_) {
    ring_ = std::make_unique<Ring>();
    ring_->buffers.resize(static_cast<size_t>(buffers_));
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device.index()).stream();
  for (size_t offset = 0; offset < bytes; offset += chunk_bytes_) {
    const size_t n = std::min(chunk_bytes_, bytes - offset);
    Ring::Buffer& buffer = ring_->buffers[ring_->next];
    ring_->next = (ring_->next + 1) % ring_->buffers.size();
    if (buffer.used) buffer.done.synchronize();  // its previous copy has left it
    if (!buffer.memory.defined()) {
      buffer.memory = at::empty({static_cast<int64_t>(chunk_bytes_)},
                                at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    }
    parallel_memcpy(buffer.memory.data_ptr(), static_cast<const char*>(host) + offset, n);
    const cudaError_t error =
        cudaMemcpyAsync(static_cast<char*>(destination) + offset, buffer.memory.data_ptr(), n,
                        cudaMemcpyHostToDevice, stream);
    if (error != cudaSuccess) {
      throw std::runtime_error(std::string("staged copy: ") + cudaGetErrorString(error));
    }
    buffer.done.record(at::cuda::getCurrentCUDAStream(device.index()));
    buffer.used = true;
  }
}
#else
struct PinnedStaging::Ring {};

PinnedStaging::PinnedStaging(size_t chunk_bytes, int buffers)
    : chunk_bytes_(chunk_bytes), buffers_(buffers) {}
PinnedStaging::~PinnedStaging() = default;
bool PinnedStaging::available() {
  return false;
}
void PinnedStaging::copy(const void*, void*, size_t, const at::Device&) {
  throw std::logic_error("PinnedStaging::copy: this build has no CUDA");
}
#endif

}  // namespace llava
