// Device memory statistics and controls; CUDA parts only where LibTorch has CUDA.
#include "stages/device.h"

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/errors.h"
#include "common/gpu_info.h"

#ifdef LLAVA_PIPE_CUDA_KERNELS
#include "stages/cuda_archs.h"  // LLAVA_PIPE_CUDA_ARCHS_BUILT, written by stages/CMakeLists.txt
#endif
#ifdef LLAVA_PIPE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace llava {

DeviceMemory device_memory(const at::Device& device) {
  DeviceMemory m;
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda()) {
    // Before the lease there is no CUDA context, and asking must not create one.
    try {
      auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
      const auto& reserved = stats.reserved_bytes[0];  // StatType::AGGREGATE
      m.current = reserved.current;
      m.peak = reserved.peak;
      m.allocated = stats.allocated_bytes[0].current;
    } catch (const c10::Error&) {
    }
    return m;
  }
#endif
  long pages = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> pages >> resident;
  m.current = resident * sysconf(_SC_PAGESIZE);
  m.allocated = m.current;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  m.peak = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  return m;
}

void require_capability(const at::Device& device, WeightDType dtype) {
#ifdef LLAVA_PIPE_CUDA
  if (!device.is_cuda()) return;
  const cudaDeviceProp* properties = at::cuda::getDeviceProperties(device.index());
  const std::string where = device.str() + ": ";
  std::string refusal = dtype_refusal(dtype, properties->name, properties->major, properties->minor);
  if (!refusal.empty()) throw ConfigError(where + refusal);
#ifdef LLAVA_PIPE_CUDA_ARCHS_BUILT
  refusal = arch_refusal(LLAVA_PIPE_CUDA_ARCHS_BUILT, properties->name, properties->major, properties->minor);
  if (!refusal.empty()) throw ConfigError(where + refusal);
#endif
#else
  (void)device;
  (void)dtype;
#endif
}

void initialize_device(const at::Device& device) {
#ifdef LLAVA_PIPE_CUDA
  // The process's current device: our kernels, CUDA graphs and cuBLAS handles follow it
  // (found on 2 GPUs: a language worker on cuda:1 launched on cuda:0's stream).
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#endif
  if (device.is_cuda()) {
    at::empty({1}, at::TensorOptions().device(device));  // context + allocator
    // The host does little tensor work here; LibTorch's intra-op threads would spin on
    // the cores that other workers and image decoding need (measured on a 16-core host:
    // the vision stage at 63 images/s with them, sharing the host with a language worker).
    at::set_num_threads(1);
  }
}

void reset_peak_memory(const at::Device& device) {
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

void release_cached_memory(const at::Device& device) {
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

void limit_device_memory(const at::Device& device, uint64_t bytes) {
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda() && bytes > 0) {
    const double total = static_cast<double>(at::cuda::getDeviceProperties(device.index())->totalGlobalMem);
    c10::cuda::CUDACachingAllocator::setMemoryFraction(std::min(1.0, bytes / total), device.index());
  }
#endif
}

void synchronize(const at::Device& device) {
#ifdef LLAVA_PIPE_CUDA
  if (device.is_cuda()) at::cuda::getCurrentCUDAStream(device.index()).synchronize();
#endif
}

void pin_for_copies(SharedMemory& memory, const at::Device& device) {
#ifdef LLAVA_PIPE_CUDA
  if (!device.is_cuda()) return;
  if (cudaHostRegister(memory.data(), memory.size(), cudaHostRegisterPortable) != cudaSuccess) {
    const char* why = cudaGetErrorString(cudaGetLastError());  // and clears it
    std::fprintf(stderr, "llava-stage: %s stays pageable (cudaHostRegister: %s)\n",
                 memory.path().c_str(), why);
    return;
  }
  memory.before_unmap([](SharedMemory& m) {
    if (cudaHostUnregister(m.data()) != cudaSuccess) (void)cudaGetLastError();
  });
#else
  (void)memory;
  (void)device;
#endif
}

}  // namespace llava
