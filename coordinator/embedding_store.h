// Image embeddings waiting for the language stage, kept as the ZeroMQ frames they arrived
// in (never copied in memory), within a byte bound; past it, spilled to files and read
// back when the language stage needs them.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
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

// Embeddings of images seen before, keyed by the image file's bytes (compared whole: two
// different files never share an entry, whatever their hash), so that a request whose
// every image is here skips the vision stage (a chat that sends its image each turn).
// Payloads are shared with the frames they came from; past the byte bound the least
// recently used entries go.
class EmbeddingCache {
 public:
  explicit EmbeddingCache(uint64_t limit) : limit_(limit) {}
  EmbeddingCache(const EmbeddingCache&) = delete;
  EmbeddingCache& operator=(const EmbeddingCache&) = delete;

  static size_t hash(const std::string& image) { return std::hash<std::string>{}(image); }
  static std::vector<size_t> hashes(const std::vector<std::string>& images);

  // The frames of these images in order (payloads shared); nullopt unless all are here.
  // `hashes` are hash() of each image (computed once by the caller).
  std::optional<std::vector<wire::Frame>> find(const std::vector<std::string>& images,
                                               const std::vector<size_t>& hashes);
  std::optional<std::vector<wire::Frame>> find(const std::vector<std::string>& images) {
    return find(images, hashes(images));
  }
  // frames[i] is the embedding of images[i]; shared, not copied.
  void put(const std::vector<std::string>& images, const std::vector<size_t>& hashes,
           std::vector<wire::Frame>& frames);
  void put(const std::vector<std::string>& images, std::vector<wire::Frame>& frames) {
    put(images, hashes(images), frames);
  }

  // Entries whose payload is a view of shared memory (coordinator/shared_embeddings.h)
  // get a copy of their own, so that the range can go back once the request is done.
  void copy_out_of_shared_memory();

  bool enabled() const { return limit_ > 0; }
  uint64_t bytes() const { return bytes_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    size_t hash = 0;
    std::string image;
    wire::Frame frame;
    uint64_t bytes = 0;  // payload + image
    std::list<Entry*>::iterator recent;
  };
  Entry* lookup(const std::string& image, size_t hash);
  void evict_to(uint64_t limit);

  uint64_t limit_;
  uint64_t bytes_ = 0;
  std::unordered_multimap<size_t, Entry> entries_;  // by hash; elements never move
  std::list<Entry*> recent_;                        // most recently used first
};

}  // namespace llava
