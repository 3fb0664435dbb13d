// Offloaded weights in one host block (see weight_offload.h).
#include "stages/weight_offload.h"

#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>

#include "stages/device.h"

#ifdef LLAVA_PIPE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace llava {
namespace {

// Every tensor starts on this boundary: our kernels load 16-byte vectors, and cuBLAS
// prefers 256-byte aligned operands.
constexpr uint64_t kAlignment = 256;

uint64_t aligned(uint64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

struct WeightOffload::HostBlock {
  void* memory = nullptr;
  bool pinned = false;
  HostBlock(uint64_t bytes, bool pin) {
#ifdef LLAVA_PIPE_CUDA
    if (pin) {
      if (cudaHostAlloc(&memory, bytes, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error("release: offload: cannot pin " + std::to_string(bytes >> 20) +
                                 " MiB of host memory for the weights (use release: exit)");
      }
      pinned = true;
      return;
    }
#else
    (void)pin;
#endif
    memory = std::aligned_alloc(kAlignment, aligned(bytes));
    if (!memory) {
      throw std::runtime_error("release: offload: cannot allocate " + std::to_string(bytes >> 20) +
                               " MiB of host memory for the weights (use release: exit)");
    }
  }
  ~HostBlock() {
#ifdef LLAVA_PIPE_CUDA
    if (pinned) {
      cudaFreeHost(memory);
      return;
    }
#endif
    std::free(memory);
  }
};

WeightOffload::WeightOffload(bool cpu_too) : cpu_too_(cpu_too) {}
WeightOffload::~WeightOffload() = default;

bool WeightOffload::moves(const at::Tensor& t) const {
  return t.defined() && (!t.device().is_cpu() || cpu_too_);
}

at::Tensor WeightOffload::view(const at::Tensor& block, const Entry& entry) const {
  const int64_t bytes = at::elementSize(entry.dtype) *
                        c10::multiply_integers(entry.sizes.begin(), entry.sizes.end());
  return block.narrow(0, static_cast<int64_t>(entry.offset), bytes).view(entry.dtype).view(entry.sizes);
}

bool WeightOffload::holds(const at::Tensor& t) const {
  if (!host_ || !t.defined() || !t.device().is_cpu()) return false;
  const auto* begin = static_cast<const char*>(host_->memory);
  const auto* p = static_cast<const char*>(t.data_ptr());
  return p >= begin && p + t.nbytes() <= begin + total_;
}

void WeightOffload::point_at(const Visit& visit, const at::Tensor& block) {
  size_t i = 0;
  visit([&](at::Tensor& t) {
    if (i >= index_.size()) throw std::logic_error("release: offload: the model has more tensors than before");
    const int entry = index_[i++];
    if (entry >= 0) t = view(block, entries_[static_cast<size_t>(entry)]);
  });
  if (i != index_.size()) throw std::logic_error("release: offload: the model has fewer tensors than before");
}

void WeightOffload::offload(const Visit& visit) {
  if (offloaded_) return;
  if (host_) {  // the copy made at the first offload is still exact
    point_at(visit, host_block_);
    offloaded_ = true;
    return;
  }
  // First offload: lay the distinct device tensors out in one block (a tied output layer
  // shares the token table's memory: it is copied once, and comes back shared).
  std::map<const void*, int> by_address;
  std::vector<at::Tensor> sources;
  at::Device device = at::kCPU;
  visit([&](at::Tensor& t) {
    if (!moves(t)) {
      index_.push_back(-1);
      return;
    }
    if (!t.is_contiguous()) t = t.contiguous();
    device = t.device();
    auto found = by_address.find(t.data_ptr());
    if (found != by_address.end() && entries_[static_cast<size_t>(found->second)].sizes == t.sizes().vec() &&
        entries_[static_cast<size_t>(found->second)].dtype == t.scalar_type()) {
      index_.push_back(found->second);
      return;
    }
    Entry entry;
    entry.offset = total_;
    entry.sizes = t.sizes().vec();
    entry.dtype = t.scalar_type();
    total_ += aligned(t.nbytes());
    const int index = static_cast<int>(entries_.size());
    entries_.push_back(entry);
    sources.push_back(t);
    by_address[t.data_ptr()] = index;
    index_.push_back(index);
  });
  host_ = std::make_unique<HostBlock>(std::max<uint64_t>(total_, kAlignment), device.is_cuda());
  host_block_ = at::from_blob(host_->memory, {static_cast<int64_t>(total_)}, at::TensorOptions().dtype(at::kByte));
  for (size_t e = 0; e < entries_.size(); ++e) {
    view(host_block_, entries_[e]).copy_(sources[e], /*non_blocking=*/host_->pinned);
  }
  synchronize(device);
  sources.clear();
  point_at(visit, host_block_);  // the device copies go once nothing else holds them
  offloaded_ = true;
}

void WeightOffload::restore(const Visit& visit, const at::Device& device) {
  if (!offloaded_) return;
  // One block, one copy: the transfer runs at the link's speed, not per tensor.
  at::Tensor block = at::empty({static_cast<int64_t>(total_)}, at::TensorOptions().dtype(at::kByte).device(device));
  block.copy_(host_block_, /*non_blocking=*/host_->pinned);
  point_at(visit, block);
  synchronize(device);
  offloaded_ = false;
}

}  // namespace llava
