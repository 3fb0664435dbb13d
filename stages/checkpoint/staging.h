// Host bytes to CUDA device memory through a ring of pinned staging buffers: threads copy
// the next chunk out of the (memory-mapped) file while the copy engine moves the previous
// one, so a checkpoint loads at the pace of the slower of the two instead of the sum of a
// pageable copy's steps (the driver stages pageable memory itself, one chunk at a time).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <memory>

namespace llava {

class PinnedStaging {
 public:
  // `buffers` pinned host buffers of `chunk_bytes` each, allocated on the first copy.
  explicit PinnedStaging(size_t chunk_bytes = size_t{64} << 20, int buffers = 3);
  ~PinnedStaging();  // waits for the copies in flight, then frees the buffers
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // Whether this build can stage (LibTorch with CUDA).
  static bool available();
  // Copies `bytes` from `host` (any host memory) to `destination` on `device`, ordered on
  // that device's current stream: later work on that stream sees the bytes. Returns once
  // `host` may change; the copy itself may still be in flight.
  void copy(const void* host, void* destination, size_t bytes, const at::Device& device);

 private:
  struct Ring;
  size_t chunk_bytes_;
  int buffers_;
  std::unique_ptr<Ring> ring_;
};

}  // namespace llava
