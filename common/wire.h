// The tensor wire format: a Cap'n Proto header followed by raw little-endian tensor frames.
// Incoming::parse checks the header against the frames (count, byte lengths, dtypes,
// limits) before anything reads a frame; Outgoing fills the frame descriptions itself.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "common/messages.capnp.h"
#include "common/shared_memory.h"

namespace llava::wire {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kU8 };
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

struct Limits {
  uint64_t max_message_bytes = 256ull << 20;  // all frames together
  uint64_t max_header_bytes = 1ull << 20;
  uint32_t max_frames = 256;
  uint32_t max_dims = 8;
};

struct Frame {
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  zmq::message_t bytes;
  // Set only while `bytes` is a view of this shared memory at `shared_offset`: a message to
  // a process that sees the same memory may then carry the range instead of the bytes.
  std::shared_ptr<SharedMemory> shared;
  uint64_t shared_offset = 0;
  int64_t numel() const;
  // A copy whose payload is this one's (zmq_msg_copy: counted, not copied).
  Frame share();
};

// The payload of a frame that arrived as a range of shared memory (inSharedMemory), and
// the memory it lies in; what a receiver's SharedResolver returns.
struct SharedView {
  zmq::message_t bytes;
  std::shared_ptr<SharedMemory> memory;
};
// Given the message's header, a frame's offset and byte length: its payload. Throws
// (SharedMemoryError) when the receiver cannot or will not read it.
using SharedResolver =
    std::function<SharedView(const schema::Header::Reader&, uint64_t offset, uint64_t bytes)>;

// A frame whose payload is `memory`'s bytes at `offset` (a view, no copy), so that it may
// go as its range (Outgoing::send_shared_as_ranges).
Frame shared_frame(const std::shared_ptr<SharedMemory>& memory, uint64_t offset, DType dtype,
                   std::vector<int64_t> shape);
// A worker's resolver: the file the header names, mapped through `maps` (kept by the
// caller), the range checked against it; SharedMemoryError names the request.
SharedResolver resolve_through(SharedMemoryMaps& maps);

// Builds one message. Set the body through header(), add frames, then take parts().
class Outgoing {
 public:
  explicit Outgoing(uint64_t request_id = 0, uint32_t attempt = 0);
  schema::Header::Builder header() { return header_; }
  // Moves the payload in: no copy.
  void add_frame(DType dtype, std::vector<int64_t> shape, zmq::message_t bytes);
  void add_frame(Frame frame);
  // The receiver sees the frames' shared memory: frames that lie in one (the first such
  // frame's) go as their range, not their bytes.
  void send_shared_as_ranges() { shared_as_ranges_ = true; }
  // [header, frame 0, ...]; the Outgoing is spent afterwards.
  std::vector<zmq::message_t> parts();

 private:
  capnp::MallocMessageBuilder builder_;
  schema::Header::Builder header_;
  std::vector<Frame> frames_;
  bool shared_as_ranges_ = false;
};

// A received message whose header has been checked against its frames.
class Incoming {
 public:
  // parts: [routing id]? header frames...; throws WireError naming the violation. Frames
  // sent as ranges of shared memory are read through `shared` (without one they are a
  // violation), so every frame of a parsed message has its payload.
  static Incoming parse(std::vector<zmq::message_t>&& parts, bool with_routing_id,
                        const Limits& limits, const SharedResolver& shared = {});
  schema::Header::Reader header() const { return header_; }
  schema::Header::Body::Which kind() const { return header_.getBody().which(); }
  uint64_t request_id() const { return header_.getRequestId(); }
  uint32_t attempt() const { return header_.getAttempt(); }
  std::vector<Frame>& frames() { return frames_; }
  const std::vector<Frame>& frames() const { return frames_; }
  zmq::message_t& routing_id() { return routing_id_; }

 private:
  Incoming() = default;
  zmq::message_t routing_id_;
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  schema::Header::Reader header_;
  std::vector<Frame> frames_;
};

// A readable name for a message kind ("languageTask").
const char* kind_name(schema::Header::Body::Which kind);

}  // namespace llava::wire
