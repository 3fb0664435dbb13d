// nvidia-smi's GPU list, CUDA_VISIBLE_DEVICES, and the dtype / architecture rules.
#include "common/gpu_info.h"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <sstream>
#include <stdexcept>

namespace llava {
namespace {

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r") - begin + 1);
}

std::vector<std::string> split(const std::string& s, char separator) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(s);
  while (std::getline(in, part, separator)) parts.push_back(trim(part));
  if (!s.empty() && s.back() == separator) parts.push_back("");
  return parts;
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// nvidia-smi writes "[N/A]" (or "[Not Supported]") where a field has no value.
bool not_available(const std::string& s) { return !s.empty() && s.front() == '['; }

// An architecture number as a compute capability: 75 -> "7.5", 120 -> "12.0".
std::string capability_text(int arch) { return std::to_string(arch / 10) + "." + std::to_string(arch % 10); }

}  // namespace

std::vector<GpuInfo> parse_nvidia_smi(const std::string& output) {
  std::vector<GpuInfo> gpus;
  std::istringstream in(output);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (trim(line).empty()) continue;
    const std::string where = "nvidia-smi output line " + std::to_string(number) + " ('" + trim(line) + "'): ";
    // index, name, compute_cap, memory.total; a name could hold a comma, the others cannot.
    const std::vector<std::string> fields = split(line, ',');
    if (fields.size() < 4) throw std::runtime_error(where + "expected 4 fields: index, name, compute_cap, memory.total");
    GpuInfo gpu;
    if (!all_digits(fields.front())) throw std::runtime_error(where + "index '" + fields.front() + "' is not a number");
    gpu.index = std::stoi(fields.front());
    for (size_t i = 1; i + 2 < fields.size(); ++i) gpu.name += (i > 1 ? ", " : "") + fields[i];
    const std::string& capability = fields[fields.size() - 2];
    if (!not_available(capability)) {
      const size_t dot = capability.find('.');
      if (dot == std::string::npos || !all_digits(capability.substr(0, dot)) || !all_digits(capability.substr(dot + 1))) {
        throw std::runtime_error(where + "compute capability '" + capability + "' is not MAJOR.MINOR");
      }
      gpu.major = std::stoi(capability.substr(0, dot));
      gpu.minor = std::stoi(capability.substr(dot + 1));
    }
    const std::string& memory = fields.back();
    if (!not_available(memory)) {
      const size_t space = memory.find(' ');
      const std::string amount = memory.substr(0, space), unit = space == std::string::npos ? "" : trim(memory.substr(space));
      if (!all_digits(amount) || unit != "MiB") {
        throw std::runtime_error(where + "memory.total '" + memory + "' is not 'N MiB'");
      }
      gpu.memory_bytes = std::stoull(amount) << 20;
    }
    gpus.push_back(gpu);
  }
  return gpus;
}

std::vector<GpuInfo> visible_gpus(std::vector<GpuInfo> gpus, const char* visible) {
  if (visible == nullptr) return gpus;
  std::vector<GpuInfo> seen;
  for (const std::string& entry : split(visible, ',')) {
    const bool negative = !entry.empty() && entry.front() == '-';
    if (!all_digits(negative ? entry.substr(1) : entry)) {
      if (seen.empty() && !entry.empty()) return gpus;  // UUIDs or MIG names
      break;
    }
    // As CUDA reads the list: it ends at the first index that names no GPU.
    if (negative) break;
    const int index = std::stoi(entry);
    bool found = false;
    for (const GpuInfo& gpu : gpus) {
      if (gpu.index != index) continue;
      seen.push_back(gpu);
      seen.back().index = static_cast<int>(seen.size()) - 1;
      found = true;
    }
    if (!found) break;
  }
  return seen;
}

uint64_t host_memory_available() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  uint64_t value = 0;
  while (meminfo >> key >> value) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") return value * 1024;  // in kB
  }
  return 0;
}

std::vector<GpuInfo> query_gpus() {
  FILE* pipe = popen((std::string(kNvidiaSmiQuery) + " 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) return {};
  std::string output;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  // Not installed (127), no GPU or no driver (non-zero): nothing visible.
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return {};
  return visible_gpus(parse_nvidia_smi(output), std::getenv("CUDA_VISIBLE_DEVICES"));
}

std::string describe(const GpuInfo& gpu) {
  char memory[32];
  std::snprintf(memory, sizeof memory, "%.1f GiB", static_cast<double>(gpu.memory_bytes) / (1ull << 30));
  const std::string capability =
      gpu.major > 0 ? std::to_string(gpu.major) + "." + std::to_string(gpu.minor) : std::string("unknown");
  return "cuda:" + std::to_string(gpu.index) + ": " + gpu.name + ", compute capability " + capability + ", " +
         memory;
}

std::string dtype_refusal(WeightDType dtype, const std::string& gpu_name, int major, int minor) {
  // bfloat16 arithmetic (cuBLAS's products, LibTorch's kernels) needs Ampere or newer.
  if (dtype != WeightDType::kBFloat16 || major == 0 || major >= 8) return "";
  return "bfloat16 needs compute capability 8.0 or newer; this " + gpu_name + " is " + std::to_string(major) + "." +
         std::to_string(minor) + ": use dtype: float16";
}

std::string arch_refusal(const std::string& archs, const std::string& gpu_name, int major, int minor) {
  if (major == 0 || trim(archs).empty()) return "";
  const int device = major * 10 + minor;
  std::string sass, ptx;
  bool covered = false;
  for (const std::string& entry : split(archs, ';')) {
    if (entry.empty() || entry == "native" || entry == "all" || entry == "all-major") return "";
    const size_t dash = entry.find('-');
    std::string number = entry.substr(0, dash);
    const std::string kind = dash == std::string::npos ? "" : entry.substr(dash + 1);
    if (!number.empty() && (number.back() == 'a' || number.back() == 'f')) number.pop_back();  // 90a: Hopper-only
    if (!all_digits(number) || (kind != "" && kind != "real" && kind != "virtual")) return "";  // not ours to judge
    const int arch = std::stoi(number);
    if (kind != "virtual") {  // SASS runs on its major's same or newer minors
      sass += (sass.empty() ? "" : ", ") + capability_text(arch);
      covered = covered || (arch / 10 == major && arch % 10 <= minor);
    }
    if (kind != "real") {  // PTX is compiled at load for any newer GPU
      ptx += (ptx.empty() ? "" : ", ") + capability_text(arch);
      covered = covered || arch <= device;
    }
  }
  if (covered) return "";
  std::string built = sass.empty() ? "" : "code for compute capability " + sass;
  if (!ptx.empty()) built += (built.empty() ? "" : " and ") + std::string("PTX for ") + ptx + " and newer";
  return "this build's CUDA kernels have " + built + " (LLAVA_PIPE_CUDA_ARCHS=" + archs + "); this " + gpu_name +
         " is " + std::to_string(major) + "." + std::to_string(minor) +
         ": rebuild with -DLLAVA_PIPE_CUDA_ARCHS=" + std::to_string(device) + " (or native)";
}

}  // namespace llava
