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
    wire::Frame copy;
    copy.dtype = f.dtype;
    copy.shape = f.shape;
    if (file) {
      copy.bytes = zmq::message_t(static_cast<size_t>(f.numel()) * wire::dtype_size(f.dtype));
      if (std::fread(copy.bytes.data(), 1, copy.bytes.size(), file) != copy.bytes.size()) {
        std::fclose(file);
        throw std::runtime_error("spilled embeddings in " + entry.file + " are truncated");
      }
    } else {
      copy.bytes.copy(f.bytes);  // shares the payload, reference-counted
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

}  // namespace llava
