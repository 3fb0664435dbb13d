// What a worker knows of its device's memory: the CUDA caching allocator's statistics on a
// GPU, the process's resident memory on the CPU; and the levers the lease needs (cap the
// allocator, give cached blocks back).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/config.h"
#include "common/shared_memory.h"

namespace llava {

struct DeviceMemory {
  int64_t current = 0;    // CUDA: reserved by the caching allocator; CPU: resident
  int64_t peak = 0;
  int64_t allocated = 0;  // CUDA: held by tensors; CPU: resident
};

DeviceMemory device_memory(const at::Device& device);
// Refuses, before any weight is loaded, a GPU that cannot run this stage: `dtype` needs a
// newer compute capability (bfloat16: 8.0), or this build's CUDA kernels have no code for
// it. Throws ConfigError saying what to change (common/gpu_info.h's rules, which `llava-pipe
// check` applies too). No effect on the CPU.
void require_capability(const at::Device& device, WeightDType dtype);
// Creates the CUDA context and allocator (only under the lease: it takes device memory).
void initialize_device(const at::Device& device);
void reset_peak_memory(const at::Device& device);
// Frees the allocator's cached blocks (after the model is destroyed).
void release_cached_memory(const at::Device& device);
// Caps the allocator at `bytes` (0: no cap). No effect on the CPU.
void limit_device_memory(const at::Device& device, uint64_t bytes);
// A file of shared memory (embeddings, common/shared_memory.h) registered with CUDA on a
// GPU, so that copies between it and the device go straight, at the pinned rate, with the
// registration undone before the file is unmapped. Refused (or on the CPU): it stays
// pageable, and copies still work, through CUDA's staging.
void pin_for_copies(SharedMemory& memory, const at::Device& device);
// Waits for the device's queued work (a no-op on the CPU).
void synchronize(const at::Device& device);

}  // namespace llava
