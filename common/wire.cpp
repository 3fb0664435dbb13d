// Header encoding, and the checks that stand between a received message and its readers.
#include "common/wire.h"

#include <kj/exception.h>

#include <cstring>
#include <limits>

#include "common/errors.h"

namespace llava::wire {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  static const char* kNames[] = {"f32", "f16", "bf16", "i32", "i64", "u8"};
  return kNames[static_cast<int>(dtype)];
}

int64_t Frame::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Frame Frame::share() {
  Frame copy;
  copy.dtype = dtype;
  copy.shape = shape;
  copy.bytes.copy(bytes);  // shares the payload, reference-counted
  copy.shared = shared;
  copy.shared_offset = shared_offset;
  return copy;
}

Frame shared_frame(const std::shared_ptr<SharedMemory>& memory, uint64_t offset, DType dtype,
                   std::vector<int64_t> shape) {
  Frame frame;
  frame.dtype = dtype;
  frame.shape = std::move(shape);
  frame.bytes =
      SharedMemory::view(memory, offset, static_cast<uint64_t>(frame.numel()) * dtype_size(dtype));
  frame.shared = memory;
  frame.shared_offset = offset;
  return frame;
}

SharedResolver resolve_through(SharedMemoryMaps& maps) {
  return [&maps](const schema::Header::Reader& header, uint64_t offset, uint64_t bytes) {
    return SharedView{maps.view(header.getSharedMemory(), offset, bytes, header.getRequestId(),
                                header.getAttempt()),
                      nullptr};
  };
}

const char* kind_name(schema::Header::Body::Which kind) {
  using W = schema::Header::Body::Which;
  switch (kind) {
    case W::HELLO: return "hello";
    case W::HEARTBEAT: return "heartbeat";
    case W::LEASE_GRANT: return "leaseGrant";
    case W::LEASE_RELEASE: return "leaseRelease";
    case W::LEASE_RELEASED: return "leaseReleased";
    case W::VISION_TASK: return "visionTask";
    case W::EMBEDDINGS: return "embeddings";
    case W::LANGUAGE_TASK: return "languageTask";
    case W::TOKEN_CHUNK: return "tokenChunk";
    case W::DONE: return "done";
    case W::FAILURE: return "failure";
    case W::SHUTDOWN: return "shutdown";
    case W::CANCEL: return "cancel";
    case W::NOT_REGISTERED: return "notRegistered";
    case W::REFUSED: return "refused";
  }
  return "unknown";
}

Outgoing::Outgoing(uint64_t request_id, uint32_t attempt)
    : header_(builder_.initRoot<schema::Header>()) {
  header_.setProtocolVersion(schema::PROTOCOL_VERSION);
  header_.setRequestId(request_id);
  header_.setAttempt(attempt);
}

void Outgoing::add_frame(DType dtype, std::vector<int64_t> shape, zmq::message_t bytes) {
  Frame frame;
  frame.dtype = dtype;
  frame.shape = std::move(shape);
  frame.bytes = std::move(bytes);
  add_frame(std::move(frame));
}

void Outgoing::add_frame(Frame frame) {
  if (static_cast<int64_t>(frame.numel() * dtype_size(frame.dtype)) !=
      static_cast<int64_t>(frame.bytes.size())) {
    throw WireError("outgoing frame: " + std::to_string(frame.bytes.size()) +
                    " bytes do not match its shape and dtype");
  }
  frames_.push_back(std::move(frame));
}

std::vector<zmq::message_t> Outgoing::parts() {
  auto infos = header_.initTensors(static_cast<unsigned>(frames_.size()));
  const SharedMemory* ranges_of = nullptr;  // the one file whose frames go as ranges
  if (shared_as_ranges_) {
    for (const auto& frame : frames_) {
      if (frame.shared) {
        ranges_of = frame.shared.get();
        header_.setSharedMemory(ranges_of->path());
        break;
      }
    }
  }
  for (size_t i = 0; i < frames_.size(); ++i) {
    auto info = infos[static_cast<unsigned>(i)];
    info.setDtype(static_cast<schema::DType>(frames_[i].dtype));
    auto shape = info.initShape(static_cast<unsigned>(frames_[i].shape.size()));
    for (size_t d = 0; d < frames_[i].shape.size(); ++d) {
      shape.set(static_cast<unsigned>(d), frames_[i].shape[d]);
    }
    info.setByteLength(frames_[i].bytes.size());
    if (ranges_of && frames_[i].shared.get() == ranges_of) {
      info.setInSharedMemory(true);
      info.setSharedOffset(frames_[i].shared_offset);
    }
  }
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder_);
  auto bytes = words.asBytes();
  std::vector<zmq::message_t> parts;
  parts.reserve(frames_.size() + 1);
  parts.emplace_back(bytes.begin(), bytes.size());
  for (auto& frame : frames_) {
    if (ranges_of && frame.shared.get() == ranges_of) {
      parts.emplace_back();  // the payload stays where it is; this copy of it goes now
    } else {
      parts.push_back(std::move(frame.bytes));
    }
  }
  frames_.clear();
  return parts;
}

Incoming Incoming::parse(std::vector<zmq::message_t>&& parts, bool with_routing_id,
                         const Limits& limits, const SharedResolver& shared) {
  Incoming in;
  size_t next = 0;
  if (with_routing_id) {
    if (parts.empty()) throw WireError("message has no routing id");
    in.routing_id_ = std::move(parts[next++]);
  }
  if (next >= parts.size()) throw WireError("message has no header frame");
  const zmq::message_t& header_bytes = parts[next++];
  const size_t size = header_bytes.size();
  if (size == 0 || size % sizeof(capnp::word) != 0) {
    throw WireError("header is " + std::to_string(size) +
                    " bytes, not a whole number of 8-byte words");
  }
  if (size > limits.max_header_bytes) {
    throw WireError("header is " + std::to_string(size) + " bytes, over the limit of " +
                    std::to_string(limits.max_header_bytes));
  }
  // ZeroMQ does not promise word alignment (small messages live inside zmq_msg_t),
  // and Cap'n Proto needs it: copy the header, which is small; frames are never copied.
  in.words_ = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
  std::memcpy(in.words_.begin(), header_bytes.data(), size);

  const size_t frame_count = parts.size() - next;
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = limits.max_header_bytes / sizeof(capnp::word);
    options.nestingLimit = 16;
    in.reader_ = std::make_unique<capnp::FlatArrayMessageReader>(in.words_.asPtr(), options);
    in.header_ = in.reader_->getRoot<schema::Header>();
    in.header_.totalSize();  // walks every pointer now, so later reads cannot fail

    if (in.header_.getProtocolVersion() != schema::PROTOCOL_VERSION) {
      throw WireError("protocol version " + std::to_string(in.header_.getProtocolVersion()) +
                      ", expected " + std::to_string(schema::PROTOCOL_VERSION));
    }
    auto kind = static_cast<unsigned>(in.header_.getBody().which());
    if (kind > static_cast<unsigned>(schema::Header::Body::REFUSED)) {
      throw WireError("unknown message kind " + std::to_string(kind));
    }
    auto tensors = in.header_.getTensors();
    if (tensors.size() != frame_count) {
      throw WireError("header describes " + std::to_string(tensors.size()) + " frames, " +
                      std::to_string(frame_count) + " arrived");
    }
    if (frame_count > limits.max_frames) {
      throw WireError(std::to_string(frame_count) + " frames, over the limit of " +
                      std::to_string(limits.max_frames));
    }
    uint64_t total = 0;
    in.frames_.reserve(frame_count);
    for (unsigned i = 0; i < frame_count; ++i) {
      auto info = tensors[i];
      const std::string where = "frame " + std::to_string(i) + ": ";
      auto raw_dtype = static_cast<unsigned>(info.getDtype());
      if (raw_dtype > static_cast<unsigned>(schema::DType::U8)) {
        throw WireError(where + "unknown dtype " + std::to_string(raw_dtype));
      }
      auto shape = info.getShape();
      if (shape.size() > limits.max_dims) {
        throw WireError(where + std::to_string(shape.size()) + " dimensions, over the limit of " +
                        std::to_string(limits.max_dims));
      }
      Frame frame;
      frame.dtype = static_cast<DType>(raw_dtype);
      uint64_t bytes = dtype_size(frame.dtype);
      for (int64_t d : shape) {
        if (d < 0) throw WireError(where + "negative dimension " + std::to_string(d));
        if (d != 0 && bytes > limits.max_message_bytes / static_cast<uint64_t>(d)) {
          throw WireError(where + "declared shape exceeds the message size limit of " +
                          std::to_string(limits.max_message_bytes) + " bytes");
        }
        bytes *= static_cast<uint64_t>(d);
        frame.shape.push_back(d);
      }
      if (info.getByteLength() != bytes) {
        throw WireError(where + "byteLength " + std::to_string(info.getByteLength()) +
                        " but shape and dtype make " + std::to_string(bytes));
      }
      const bool in_shared = info.getInSharedMemory();
      const size_t carried = in_shared ? bytes : parts[next + i].size();
      if (in_shared && parts[next + i].size() != 0) {
        throw WireError(where + "is in shared memory but carries " +
                        std::to_string(parts[next + i].size()) + " bytes too");
      }
      if (carried != bytes) {
        throw WireError(where + "carries " + std::to_string(carried) + " bytes, header says " +
                        std::to_string(bytes));
      }
      total += bytes;
      if (total > limits.max_message_bytes) {
        throw WireError("frames total more than the limit of " +
                        std::to_string(limits.max_message_bytes) + " bytes");
      }
      if (in_shared) {
        if (!shared)
          throw WireError(where + "is in shared memory, which this receiver does not read");
        if (!in.header_.hasSharedMemory())
          throw WireError(where + "is in shared memory, but none is named");
        SharedView view = shared(in.header_, info.getSharedOffset(), bytes);
        if (view.bytes.size() != bytes)
          throw WireError(where + "shared memory gave the wrong size");
        frame.bytes = std::move(view.bytes);
        frame.shared = std::move(view.memory);
        frame.shared_offset = info.getSharedOffset();
      } else {
        frame.bytes = std::move(parts[next + i]);
      }
      in.frames_.push_back(std::move(frame));
    }
  } catch (const kj::Exception& e) {
    throw WireError(std::string("malformed header: ") + e.getDescription().cStr());
  }
  return in;
}

}  // namespace llava::wire
