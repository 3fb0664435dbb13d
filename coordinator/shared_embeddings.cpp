// Ranges of shared memory offered to vision tasks, and the answers read from them.
#include "coordinator/shared_embeddings.h"

#include <iostream>

namespace llava {
namespace {

// Gives a range back when the last holder goes (the offer's record, the answer's views).
class RangeHold {
 public:
  RangeHold(std::shared_ptr<SharedRanges> ranges, uint64_t offset, uint64_t bytes)
      : ranges_(std::move(ranges)), offset_(offset), bytes_(bytes) {}
  ~RangeHold() { ranges_->give(offset_, bytes_); }
  RangeHold(const RangeHold&) = delete;
  RangeHold& operator=(const RangeHold&) = delete;

 private:
  std::shared_ptr<SharedRanges> ranges_;
  uint64_t offset_, bytes_;
};

}  // namespace

SharedEmbeddings::SharedEmbeddings(uint64_t bytes_per_worker)
    : bytes_per_worker_(bytes_per_worker), id_(bytes_per_worker > 0 ? shared_memory_id() : "") {
  if (!id_.empty()) remove_stale_shared_memory();
}

void SharedEmbeddings::registered(size_t worker, const std::string& their_id) {
  Worker fresh;
  fresh.sees_ours = !id_.empty() && their_id == id_;
  workers_[worker] = fresh;  // the old file lives on in the frames that use it
}

void SharedEmbeddings::refused(size_t worker) {
  workers_[worker].sees_ours = false;
}

bool SharedEmbeddings::sees_ours(size_t worker) const {
  auto it = workers_.find(worker);
  return it != workers_.end() && it->second.sees_ours;
}

size_t SharedEmbeddings::files() const {
  size_t n = 0;
  for (const auto& [index, worker] : workers_) n += worker.file != nullptr;
  return n;
}

size_t SharedEmbeddings::workers_seeing_ours() const {
  size_t n = 0;
  for (const auto& [index, worker] : workers_) n += worker.sees_ours;
  return n;
}

SharedEmbeddings::File* SharedEmbeddings::file_of(size_t index) {
  Worker& worker = workers_[index];
  if (!worker.sees_ours || worker.cannot_create) return nullptr;
  if (!worker.file) {
    try {
      auto file = std::make_shared<File>();
      file->memory = SharedMemory::create(bytes_per_worker_);
      file->ranges = std::make_shared<SharedRanges>(file->memory->size());
      worker.file = std::move(file);
    } catch (const std::exception& e) {
      worker.cannot_create = true;  // until it registers again
      std::cerr << "llava-pipe: embeddings go through the socket, not shared memory: " << e.what()
                << " (coordinator.shared_memory)\n";
      return nullptr;
    }
  }
  return worker.file.get();
}

void SharedEmbeddings::sweep(const std::function<bool(uint64_t, uint32_t)>& waiting) {
  for (auto it = offered_.begin(); it != offered_.end();) {
    it = waiting(it->first, it->second.attempt) ? std::next(it) : offered_.erase(it);
  }
}

bool SharedEmbeddings::offer(size_t worker, wire::Outgoing& task, uint32_t images,
                             const std::function<bool(uint64_t, uint32_t)>& waiting,
                             const std::function<void()>& make_room) {
  const uint64_t request = task.header().getRequestId();
  offered_.erase(request);  // an earlier attempt's, given up on
  File* file = bytes_per_image_ > 0 && images > 0 ? file_of(worker) : nullptr;
  if (!file) return false;
  const uint64_t bytes = bytes_per_image_ * images;
  auto offset = file->ranges->take(bytes);
  if (!offset) {
    sweep(waiting);
    offset = file->ranges->take(bytes);
  }
  if (!offset && make_room) {
    make_room();
    offset = file->ranges->take(bytes);
  }
  if (!offset) return false;
  Offered& offered = offered_[request];
  offered.file = workers_[worker].file;
  offered.offset = *offset;
  offered.bytes = bytes;
  offered.attempt = task.header().getAttempt();
  offered.hold = std::make_shared<RangeHold>(file->ranges, *offset, bytes);
  task.header().setSharedMemory(file->memory->path());
  auto body = task.header().getBody().getVisionTask();
  body.setSharedOffset(*offset);
  body.setSharedBytes(bytes);
  return true;
}

wire::SharedView SharedEmbeddings::resolve(const schema::Header::Reader& header, uint64_t offset,
                                           uint64_t bytes) {
  const uint64_t request = header.getRequestId();
  const uint32_t attempt = header.getAttempt();
  auto it = offered_.find(request);
  if (it == offered_.end() || it->second.attempt != attempt) {
    throw SharedMemoryError("embeddings in shared memory for request " + std::to_string(request) +
                                ", which was offered no range",
                            request, attempt);
  }
  const Offered& offered = it->second;
  if (std::string(header.getSharedMemory().cStr()) != offered.file->memory->path()) {
    throw SharedMemoryError("embeddings of request " + std::to_string(request) + " in " +
                                header.getSharedMemory().cStr() + ", not in the file offered",
                            request, attempt);
  }
  if (offset < offered.offset || offset - offered.offset > offered.bytes ||
      bytes > offered.bytes - (offset - offered.offset)) {
    throw SharedMemoryError("embeddings of request " + std::to_string(request) + " at [" +
                                std::to_string(offset) + ", +" + std::to_string(bytes) +
                                "), outside the range offered [" + std::to_string(offered.offset) +
                                ", +" + std::to_string(offered.bytes) + ")",
                            request, attempt);
  }
  ++frames_read_;
  return {SharedMemory::view(offered.file->memory, offset, bytes, offered.hold),
          offered.file->memory};
}

void SharedEmbeddings::answered(uint64_t request, uint32_t attempt) {
  auto it = offered_.find(request);
  if (it != offered_.end() && it->second.attempt == attempt) offered_.erase(it);
}

}  // namespace llava
