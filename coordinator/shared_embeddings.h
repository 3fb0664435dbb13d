// Embeddings through shared memory, when the workers see the coordinator's /dev/shm (one
// host; `coordinator.shared_memory` bytes per vision worker, 0 = off).
//
// Each registration of such a vision worker gets a file of its own, made at its first
// task. A vision task is offered a range of it; the worker writes the task's embeddings
// there and answers with the range instead of the bytes. The coordinator reads the answer
// only if its frames lie in the range it gave that task (request and attempt), and keeps
// them as views of the file: the store, the cache and the language task share them as
// they share any frame, and a language worker that sees the same memory is sent the range
// too. A range goes back when the last frame using it is gone (answered, cached, finished).
//
// Why two tasks never write one range at once: a range is offered again only to a later
// task of the same registration (a worker that died, stalled or registered again gets a
// new file), and a worker answers its tasks in order, so a task the coordinator gave up on
// (cancelled, requeued) has written its range, if at all, before the next task offered it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/shared_memory.h"
#include "common/wire.h"

namespace llava {

class SharedEmbeddings {
 public:
  explicit SharedEmbeddings(uint64_t bytes_per_worker);

  // The id of the memory this coordinator sees (shared_memory_id(); "" when off).
  const std::string& id() const { return id_; }
  // A (new) registration of worker `worker` (its index in the pool), which sees the
  // memory `their_id`: a vision worker's file, if any, is left to the frames still in it.
  void registered(size_t worker, const std::string& their_id);
  // The worker could not read our memory, or lied about it: it gets bytes from now on.
  void refused(size_t worker);
  bool sees_ours(size_t worker) const;

  // From every answer with embeddings: the bytes of one image's.
  void learn(uint64_t bytes_per_image) { bytes_per_image_ = bytes_per_image; }

  // A range for this vision task of `images` images to `worker`, written into the task
  // (its header's file, its body's offset and bytes). False when there is none to offer
  // (off, another host, the size of an image's embeddings not known yet, no room): the
  // worker sends the bytes. When there is no room, ranges of tasks no longer waited for
  // (`waiting(request, attempt)` false) go back, then `make_room()` is asked once.
  bool offer(size_t worker, wire::Outgoing& task, uint32_t images,
             const std::function<bool(uint64_t, uint32_t)>& waiting,
             const std::function<void()>& make_room);
  // Reads a frame of an Embeddings answer that came as a range (wire::SharedResolver):
  // only within the range offered to that request's attempt. Throws SharedMemoryError.
  wire::SharedView resolve(const schema::Header::Reader& header, uint64_t offset, uint64_t bytes);
  // The task has its answer (embeddings or a failure): a range its frames did not take
  // goes back.
  void answered(uint64_t request, uint32_t attempt);

  // A language task is going out with frames of ours as ranges.
  void sent_as_ranges() { ++tasks_sent_as_ranges_; }

  size_t files() const;                                  // registrations' files now (tests)
  size_t workers_seeing_ours() const;                    // registered, and not refused since
  uint64_t frames_read() const { return frames_read_; }  // of answers, from shared memory
  uint64_t tasks_sent_as_ranges() const { return tasks_sent_as_ranges_; }

 private:
  struct File {
    std::shared_ptr<SharedMemory> memory;
    std::shared_ptr<SharedRanges> ranges;
  };
  struct Worker {
    bool sees_ours = false;
    bool cannot_create = false;  // this registration's file could not be made
    std::shared_ptr<File> file;  // this registration's (made at its first task)
  };
  struct Offered {
    std::shared_ptr<File> file;
    uint64_t offset = 0, bytes = 0;
    uint32_t attempt = 0;
    std::shared_ptr<void> hold;  // the range goes back when this and every view are gone
  };
  File* file_of(size_t worker);
  void sweep(const std::function<bool(uint64_t, uint32_t)>& waiting);

  uint64_t bytes_per_worker_;
  std::string id_;
  uint64_t bytes_per_image_ = 0;
  std::map<size_t, Worker> workers_;
  std::map<uint64_t, Offered> offered_;  // by request: one vision task at a time
  uint64_t frames_read_ = 0, tasks_sent_as_ranges_ = 0;
};

}  // namespace llava
