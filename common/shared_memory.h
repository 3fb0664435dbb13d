// Shared memory between the processes of one host: a file in /dev/shm mapped by each.
// Embeddings cross from a vision worker to the coordinator and on to a language worker
// through one instead of the socket when all three see the same /dev/shm: the vision
// worker writes them into a range the coordinator gave its task, and the messages carry
// the range, not the bytes (coordinator/shared_embeddings.h has the rules).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "common/errors.h"

namespace llava {

// This process's view of shared memory: the host's boot id, /dev/shm's device and inode;
// "" when there is none. Two processes with the same id see the same files.
std::string shared_memory_id();

// The payload of a frame lies in a file this receiver cannot map (or out of its bounds):
// the request goes on through the socket. Names the request it arrived with.
struct SharedMemoryError : WireError {
  SharedMemoryError(const std::string& message, uint64_t request, uint32_t attempt)
      : WireError(message), request(request), attempt(attempt) {}
  uint64_t request;
  uint32_t attempt;
};

// One file in /dev/shm, mapped read-write.
class SharedMemory {
 public:
  // A new file of `bytes`, its pages reserved at once (a full /dev/shm fails here, never
  // later as a SIGBUS on a write); removed when this mapping ends. Throws with the reason.
  static std::shared_ptr<SharedMemory> create(uint64_t bytes);
  // A file another process created. Only llava-pipe's own files of /dev/shm, owned by
  // this user. Throws with the reason.
  static std::shared_ptr<SharedMemory> open(const std::string& path);
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  char* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Called once, just before the mapping ends (a worker undoes its CUDA registration).
  void before_unmap(std::function<void(SharedMemory&)> undo) { before_unmap_ = std::move(undo); }

  // A ZeroMQ message over [offset, offset + bytes) (no copy) that keeps this mapping, and
  // `hold` with it, until the message and every copy of it (zmq_msg_copy) are gone.
  static zmq::message_t view(const std::shared_ptr<SharedMemory>& memory, uint64_t offset,
                             uint64_t bytes, std::shared_ptr<void> hold = nullptr);

 private:
  SharedMemory() = default;
  std::string path_;
  char* data_ = nullptr;
  uint64_t size_ = 0;
  bool owner_ = false;
  std::function<void(SharedMemory&)> before_unmap_;
};

// Files of coordinators that are gone (killed before they removed them): removed. Only
// files made in this pid namespace are judged (containers may share a /dev/shm).
void remove_stale_shared_memory();

// The files a worker has mapped, by path: the few most recent stay mapped (a mapping
// outlives its eviction while frames still use it).
class SharedMemoryMaps {
 public:
  // `on_map`: called once for each file this maps (a worker registers it with CUDA).
  explicit SharedMemoryMaps(std::function<void(SharedMemory&)> on_map = {})
      : on_map_(std::move(on_map)) {}
  // [offset, offset + bytes) of `path` as a message (no copy); throws SharedMemoryError.
  zmq::message_t view(const std::string& path, uint64_t offset, uint64_t bytes,
                      uint64_t request = 0, uint32_t attempt = 0);
  std::shared_ptr<SharedMemory> get(const std::string& path);  // throws std::runtime_error

 private:
  static constexpr size_t kKept = 4;
  std::function<void(SharedMemory&)> on_map_;
  std::list<std::shared_ptr<SharedMemory>> recent_;  // most recent first
};

// Ranges of one shared-memory file, taken and given back (first fit, neighbours merged).
// Thread-safe: a range may come back from ZeroMQ's I/O thread, when a message that held
// it has been sent.
class SharedRanges {
 public:
  explicit SharedRanges(uint64_t size);
  std::optional<uint64_t> take(uint64_t bytes);  // the offset, or none big enough is free
  void give(uint64_t offset, uint64_t bytes);
  uint64_t free_bytes() const;

  static constexpr uint64_t kAlign = 4096;  // each range starts on its own page

 private:
  mutable std::mutex mutex_;
  std::map<uint64_t, uint64_t> free_;  // offset -> bytes
  uint64_t free_bytes_ = 0;
};

}  // namespace llava
