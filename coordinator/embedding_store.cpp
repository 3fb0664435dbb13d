// Host-memory bound and disk spill for waiting embeddings.
#include "coordinator/embedding_store.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/errors.h"

namespace llava {

EmbeddingStore::EmbeddingStore(uint64_t memory_limit, std::string spill_dir)
    : limit_(memory_limit), dir_(std::move(spill_dir)) {}

EmbeddingStore::~EmbeddingStore() {
  for (auto& [id, entry] : entries_) {
    if (!entry.file.empty()) std::remove(entry.file.c_str());
  }
}

size_t EmbeddingStore::spilled() const {
  size_t n = 0;
  for (const auto& [id, entry] : entries_) n += !entry.file.empty();
  return n;
}

void EmbeddingStore::put(uint64_t request, std::vector<wire::Frame> frames) {
  erase(request);
  Entry entry;
  for (const auto& f : frames) entry.bytes += f.bytes.size();
  if (in_memory_ + entry.bytes > limit_) {
    std::string path = dir_ + "/llava-pipe-embeddings-XXXXXX";
    int fd = mkstemp(path.data());
    if (fd < 0) {
      throw std::runtime_error("cannot spill embeddings to " + dir_ + ": " + std::strerror(errno));
    }
    for (auto& f : frames) {
      const char* p = static_cast<const char*>(f.bytes.data());
      size_t left = f.bytes.size();
      while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n <= 0) {
          ::close(fd);
          std::remove(path.c_str());
          throw std::runtime_error("cannot spill embeddings to " + path + ": " + std::strerror(errno));
        }
        p += n, left -= static_cast<size_t>(n);
      }
      f.bytes = zmq::message_t();  // the payload now lives in the file
      f.shared.reset();            // (and its shared memory goes back)
    }
    ::close(fd);
    entry.file = path;
  } else {
    in_memory_ += entry.bytes;
  }
  entry.frames = std::move(frames);
  entries_.emplace(request, std::move(entry));
}

std::vector<wire::Frame> EmbeddingStore::share(uint64_t request) {
  Entry& entry = entries_.at(request);
  std::vector<wire::Frame> out;
  std::FILE* file = entry.file.empty() ? nullptr : std::fopen(entry.file.c_str(), "rb");
  if (!entry.file.empty() && !file) throw std::runtime_error("cannot read back " + entry.file);
  for (auto& f : entry.frames) {
    if (!file) {
      out.push_back(f.share());
      continue;
    }
    wire::Frame copy;
    copy.dtype = f.dtype;
    copy.shape = f.shape;
    copy.bytes = zmq::message_t(static_cast<size_t>(f.numel()) * wire::dtype_size(f.dtype));
    if (std::fread(copy.bytes.data(), 1, copy.bytes.size(), file) != copy.bytes.size()) {
      std::fclose(file);
      throw std::runtime_error("spilled embeddings in " + entry.file + " are truncated");
    }
    out.push_back(std::move(copy));
  }
  if (file) std::fclose(file);
  return out;
}

void EmbeddingStore::erase(uint64_t request) {
  auto it = entries_.find(request);
  if (it == entries_.end()) return;
  if (it->second.file.empty()) {
    in_memory_ -= it->second.bytes;
  } else {
    std::remove(it->second.file.c_str());
  }
  entries_.erase(it);
}

std::vector<size_t> EmbeddingCache::hashes(const std::vector<std::string>& images) {
  std::vector<size_t> out;
  for (const auto& image : images) out.push_back(hash(image));
  return out;
}

EmbeddingCache::Entry* EmbeddingCache::lookup(const std::string& image, size_t hash) {
  auto [from, to] = entries_.equal_range(hash);
  for (auto it = from; it != to; ++it) {
    if (it->second.image == image) return &it->second;
  }
  return nullptr;
}

std::optional<std::vector<wire::Frame>> EmbeddingCache::find(const std::vector<std::string>& images,
                                                             const std::vector<size_t>& hashes) {
  std::vector<Entry*> found;
  for (size_t i = 0; i < images.size(); ++i) {
    Entry* entry = lookup(images[i], hashes[i]);
    if (!entry) return std::nullopt;
    found.push_back(entry);
  }
  std::vector<wire::Frame> frames;
  for (Entry* entry : found) {
    recent_.splice(recent_.begin(), recent_, entry->recent);
    frames.push_back(entry->frame.share());
  }
  return frames;
}

void EmbeddingCache::put(const std::vector<std::string>& images, const std::vector<size_t>& hashes,
                         std::vector<wire::Frame>& frames) {
  for (size_t i = 0; i < images.size() && i < frames.size(); ++i) {
    const uint64_t bytes = frames[i].bytes.size() + images[i].size();
    if (bytes > limit_ || lookup(images[i], hashes[i])) continue;
    evict_to(limit_ - bytes);
    auto it =
        entries_.emplace(hashes[i], Entry{hashes[i], images[i], frames[i].share(), bytes, {}});
    it->second.recent = recent_.insert(recent_.begin(), &it->second);
    bytes_ += bytes;
  }
}

void EmbeddingCache::copy_out_of_shared_memory() {
  for (auto& [hash, entry] : entries_) {
    wire::Frame& frame = entry.frame;
    if (!frame.shared) continue;
    frame.bytes = zmq::message_t(frame.bytes.data(), frame.bytes.size());  // a copy
    frame.shared.reset();
  }
}

void EmbeddingCache::evict_to(uint64_t limit) {
  while (bytes_ > limit && !recent_.empty()) {
    Entry* oldest = recent_.back();
    recent_.pop_back();
    bytes_ -= oldest->bytes;
    auto [from, to] = entries_.equal_range(oldest->hash);
    for (auto it = from; it != to; ++it) {
      if (&it->second == oldest) {
        entries_.erase(it);
        break;
      }
    }
  }
}

}  // namespace llava
