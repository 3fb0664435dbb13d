// Brackets the work that ncu measures when LLAVA_PIPE_PROFILE is set:
//   LLAVA_PIPE_PROFILE=1 ncu --profile-from-start off --metrics gpu__time_duration.sum TOOL ...
// cudaProfilerStart/Stop come from the CUDA runtime LibTorch loaded (none on a CPU build,
// where this does nothing).
#pragma once

#include <dlfcn.h>

#include <cstdlib>

namespace llava {

inline void profile_range(bool start) {
  if (std::getenv("LLAVA_PIPE_PROFILE") == nullptr) return;
  auto call = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, start ? "cudaProfilerStart" : "cudaProfilerStop"));
  if (call != nullptr) call();
}

}  // namespace llava
