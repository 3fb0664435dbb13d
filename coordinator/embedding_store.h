// Image embeddings waiting for the language stage, kept as the ZeroMQ frames they arrived
// in (never copied in memory), within a byte bound; past it, spilled to files and read
// back when the language stage needs them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/wire.h"

namespace llava {

class EmbeddingStore {
 public:
  EmbeddingStore(uint64_t memory_limit, std::string spill_dir);
  ~EmbeddingStore();
  EmbeddingStore(const EmbeddingStore&) = delete;
  EmbeddingStore& operator=(const EmbeddingStore&) = delete;

  void put(uint64_t request, std::vector<wire::Frame> frames);
  bool has(uint64_t request) const { return entries_.count(request) > 0; }
  // Frames to send: in memory, ZeroMQ copies that share the payload (zmq_msg_copy);
  // spilled, read back from the file. The store keeps its own until erase().
  std::vector<wire::Frame> share(uint64_t request);
  void erase(uint64_t request);

  uint64_t bytes_in_memory() const { return in_memory_; }
  size_t spilled() const;  // requests whose embeddings are on disk

 private:
  struct Entry {
    std::vector<wire::Frame> frames;  // payloads empty when spilled
    std::string file;                 // non-empty when spilled
    uint64_t bytes = 0;
  };
  uint64_t limit_;
  std::string dir_;
  uint64_t in_memory_ = 0;
  std::map<uint64_t, Entry> entries_;
};

}  // namespace llava
