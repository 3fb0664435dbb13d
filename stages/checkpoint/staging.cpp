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

// The buffers are the ring's own (cudaHostAlloc / cudaFreeHost), not LibTorch's caching
// host allocator, which would keep them pinned for the life of the process.
struct PinnedStaging::Ring {
  struct Buffer {
    void* memory = nullptr;    // pinned host bytes
    at::cuda::CUDAEvent done;  // recorded after the copy out of it
    bool used = false;
  };
  std::vector<Buffer> buffers;
  size_t next = 0;
};

namespace {

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
  }
}

}  // namespace

PinnedStaging::PinnedStaging(size_t chunk_bytes, int buffers)
    : chunk_bytes_(std::max<size_t>(chunk_bytes, 1)), buffers_(std::max(buffers, 1)) {}

PinnedStaging::~PinnedStaging() {
  if (!ring_) return;
  for (auto& buffer : ring_->buffers) {
    if (buffer.used) buffer.done.synchronize();
    if (buffer.memory != nullptr) cudaFreeHost(buffer.memory);
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
  const at::cuda::CUDAStream stream = at::cuda::getCurrentCUDAStream(device.index());
  for (size_t offset = 0; offset < bytes; offset += chunk_bytes_) {
    const size_t n = std::min(chunk_bytes_, bytes - offset);
    Ring::Buffer& buffer = ring_->buffers[ring_->next];
    ring_->next = (ring_->next + 1) % ring_->buffers.size();
    if (buffer.used) buffer.done.synchronize();  // its previous copy has left it
    if (buffer.memory == nullptr) {
      check(cudaHostAlloc(&buffer.memory, chunk_bytes_, cudaHostAllocDefault), "staging buffer");
    }
    parallel_memcpy(buffer.memory, static_cast<const char*>(host) + offset, n);
    check(cudaMemcpyAsync(static_cast<char*>(destination) + offset, buffer.memory, n,
                          cudaMemcpyHostToDevice, stream.stream()),
          "staged copy");
    buffer.done.record(stream);
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
