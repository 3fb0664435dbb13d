// `release: offload`: a stage's weights kept in host memory between its turns on a shared
// device. The process and its CUDA context stay; the next grant copies the weights back in
// one host-to-device transfer from pinned memory, instead of a process start and a file read.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace llava {

class WeightOffload {
 public:
  // Calls its argument on every tensor of a model, in a fixed order (the models'
  // visit_tensors); the argument may replace a tensor by an equal one elsewhere.
  using Visit = std::function<void(const std::function<void(at::Tensor&)>&)>;

  // `cpu_too`: treat tensors on the CPU as device tensors (tests exercise the copies on a
  // build without CUDA). Otherwise only tensors on a GPU move; host-resident ones (the
  // token table of a quantized decoder, streamed layers) stay where they are.
  explicit WeightOffload(bool cpu_too = false);
  ~WeightOffload();
  WeightOffload(const WeightOffload&) = delete;
  WeightOffload& operator=(const WeightOffload&) = delete;

  // Replaces every device tensor with its copy in host memory; the device copies are freed
  // once nothing else holds them. The first call copies (into one pinned block, tensors
  // that share memory once); later calls reuse that copy, since weights do not change
  // between turns. Throws if the model's tensors are not those of the first call.
  void offload(const Visit& visit);
  // Copies the weights back to `device` in one transfer, into one block, and replaces the
  // host tensors with views of it. Waits for the copy.
  void restore(const Visit& visit, const at::Device& device);

  bool offloaded() const { return offloaded_; }
  uint64_t bytes() const { return total_; }  // host bytes held (0 before the first offload)
  // Whether t's memory lies in the host copy.
  bool holds(const at::Tensor& t) const;

 private:
  struct Entry {  // one distinct tensor in the block
    uint64_t offset = 0;
    std::vector<int64_t> sizes;
    at::ScalarType dtype = at::kFloat;
  };
  bool moves(const at::Tensor& t) const;
  at::Tensor view(const at::Tensor& block, const Entry& entry) const;
  // Replaces every moved tensor the model visits with its view of `block` (the host copy
  // or a device block laid out alike). Throws if the model's tensors are not the first
  // offload's.
  void point_at(const Visit& visit, const at::Tensor& block);

  bool cpu_too_;
  bool offloaded_ = false;
  std::vector<Entry> entries_;
  std::vector<int> index_;  // per visited tensor: its entry, or -1 (not moved)
  uint64_t total_ = 0;
  struct HostBlock;  // pinned on CUDA, plain memory otherwise
  std::unique_ptr<HostBlock> host_;
  at::Tensor host_block_;  // [total_] uint8 over host_
};

}  // namespace llava
