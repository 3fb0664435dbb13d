// The tensor wire format: a Cap'n Proto header followed by raw little-endian tensor frames.
// Incoming::parse checks the header against the frames (count, byte lengths, dtypes,
// limits) before anything reads a frame; Outgoing fills the frame descriptions itself.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "common/messages.capnp.h"

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
  int64_t numel() const;
};

// Builds one message. Set the body through header(), add frames, then take parts().
class Outgoing {
 public:
  explicit Outgoing(uint64_t request_id = 0, uint32_t attempt = 0);
  schema::Header::Builder header() { return header_; }
  // Moves the payload in: no copy.
  void add_frame(DType dtype, std::vector<int64_t> shape, zmq::message_t bytes);
  void add_frame(Frame frame);
  // [header, frame 0, ...]; the Outgoing is spent afterwards.
  std::vector<zmq::message_t> parts();

 private:
  capnp::MallocMessageBuilder builder_;
  schema::Header::Builder header_;
  std::vector<Frame> frames_;
};

// A received message whose header has been checked against its frames.
class Incoming {
 public:
  // parts: [routing id]? header frames...; throws WireError naming the violation.
  static Incoming parse(std::vector<zmq::message_t>&& parts, bool with_routing_id,
                        const Limits& limits);
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
