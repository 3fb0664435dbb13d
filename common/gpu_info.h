// The host's NVIDIA GPUs as nvidia-smi lists them (no CUDA, no LibTorch: `llava-pipe check`
// runs it), and the two rules that say whether a GPU can run a stage: the weight dtype's
// compute capability, and the architectures the CUDA kernels were built for. The worker
// applies the same rules at load (stages/device.cpp), so check and the worker agree.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"

namespace llava {

struct GpuInfo {
  int index = 0;              // cuda:N as a worker sees it (after CUDA_VISIBLE_DEVICES)
  std::string name;           // "NVIDIA L4", "Tesla T4"
  int major = 0, minor = 0;   // compute capability; 0.0 when nvidia-smi does not know it
  uint64_t memory_bytes = 0;  // memory.total
};

// The command whose output parse_nvidia_smi reads.
constexpr const char* kNvidiaSmiQuery =
    "nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv,noheader";

// One GpuInfo per line of kNvidiaSmiQuery's output ("0, NVIDIA L4, 8.9, 23034 MiB"). Throws
// std::runtime_error naming the line and the field that does not read.
std::vector<GpuInfo> parse_nvidia_smi(const std::string& output);

// The GPUs a worker can see: those CUDA_VISIBLE_DEVICES names (when it is a list of
// indices), in its order, renumbered from 0. `visible` null: no such variable, all of them.
// UUIDs or MIG names are left alone (their mapping needs NVML).
std::vector<GpuInfo> visible_gpus(std::vector<GpuInfo> gpus, const char* visible);

// Runs kNvidiaSmiQuery and applies CUDA_VISIBLE_DEVICES. Empty when nvidia-smi is missing
// or sees no GPU; throws std::runtime_error when its output does not parse.
std::vector<GpuInfo> query_gpus();

// The host memory available to new work (/proc/meminfo's MemAvailable), 0 when unknown.
uint64_t host_memory_available();

// "cuda:0: NVIDIA L4, compute capability 8.9, 22.5 GiB"
std::string describe(const GpuInfo& gpu);

// Empty when a GPU of compute capability major.minor runs weights of `dtype`; otherwise
// what to do: "bfloat16 needs compute capability 8.0 or newer; this Tesla T4 is 7.5: use
// dtype: float16".
std::string dtype_refusal(WeightDType dtype, const std::string& gpu_name, int major, int minor);

// Empty when a build whose CUDA architectures are `archs` (CMake's list: "75-real;90-virtual",
// "86", "native") has code a GPU of major.minor runs: SASS of the same major and a minor no
// newer, or PTX of an architecture no newer (JIT-compiled at load). Otherwise the refusal,
// naming what was built and how to rebuild. An empty list, "native", "all" and "all-major"
// are taken to cover the GPU.
std::string arch_refusal(const std::string& archs, const std::string& gpu_name, int major, int minor);

}  // namespace llava
