#include "common/wire.h"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "common/errors.h"
#include "common/transport.h"

namespace {

using llava::WireError;
using llava::wire::DType;
using llava::wire::Incoming;
using llava::wire::Limits;
using llava::wire::Outgoing;
using Which = llava::schema::Header::Body::Which;

zmq::message_t bytes_of(size_t n, uint8_t seed = 1) {
  zmq::message_t m(n);
  auto* p = static_cast<uint8_t*>(m.data());
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(seed + i * 7);
  return m;
}

Incoming round_trip(Outgoing& out) {
  return Incoming::parse(out.parts(), /*with_routing_id=*/false, Limits{});
}

TEST(Wire, RoundTripsEveryMessageKind) {
  {
    Outgoing out(7, 2);
    auto hello = out.header().getBody().initHello();
    hello.setStage(llava::schema::Stage::LANGUAGE);
    hello.setDevice("cuda:1");
    hello.setPid(4242);
    hello.setReplica(3);
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::HELLO);
    EXPECT_EQ(in.request_id(), 7u);
    EXPECT_EQ(in.attempt(), 2u);
    EXPECT_EQ(in.header().getBody().getHello().getDevice(), "cuda:1");
    EXPECT_EQ(in.header().getBody().getHello().getPid(), 4242u);
    EXPECT_EQ(in.header().getBody().getHello().getReplica(), 3u);
  }
  {
    Outgoing out;
    auto beat = out.header().getBody().initHeartbeat();
    beat.setState(llava::schema::WorkerState::LEASED);
    beat.setPeakDeviceBytes(123456789012ull);
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::HEARTBEAT);
    EXPECT_EQ(in.header().getBody().getHeartbeat().getState(), llava::schema::WorkerState::LEASED);
    EXPECT_EQ(in.header().getBody().getHeartbeat().getPeakDeviceBytes(), 123456789012ull);
  }
  {
    Outgoing out;
    auto grant = out.header().getBody().initLeaseGrant();
    grant.setDevice("cuda:0");
    grant.setMemoryLimit(22ull << 30);
    grant.setEpoch(5);
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::LEASE_GRANT);
    EXPECT_EQ(in.header().getBody().getLeaseGrant().getMemoryLimit(), 22ull << 30);
    EXPECT_EQ(in.header().getBody().getLeaseGrant().getEpoch(), 5u);
  }
  {
    Outgoing out;
    auto release = out.header().getBody().initLeaseRelease();
    release.setHow(llava::schema::ReleaseHow::UNLOAD);
    release.setEpoch(5);
    auto in = round_trip(out);
    EXPECT_EQ(in.header().getBody().getLeaseRelease().getHow(), llava::schema::ReleaseHow::UNLOAD);
  }
  {
    Outgoing out;
    auto released = out.header().getBody().initLeaseReleased();
    released.setPeakDeviceBytes(99);
    released.setLoadSeconds(1.5);
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::LEASE_RELEASED);
    EXPECT_DOUBLE_EQ(in.header().getBody().getLeaseReleased().getLoadSeconds(), 1.5);
  }
  {
    Outgoing out(11);
    out.header().getBody().initVisionTask().setImageCount(2);
    out.add_frame(DType::kU8, {100}, bytes_of(100));
    out.add_frame(DType::kU8, {3}, bytes_of(3));
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::VISION_TASK);
    ASSERT_EQ(in.frames().size(), 2u);
    EXPECT_EQ(in.frames()[1].bytes.size(), 3u);
  }
  {
    Outgoing out(11);
    out.header().getBody().initEmbeddings().setImageCount(1);
    out.add_frame(DType::kF16, {576, 64}, bytes_of(576 * 64 * 2));
    auto in = round_trip(out);
    EXPECT_EQ(in.kind(), Which::EMBEDDINGS);
    EXPECT_EQ(in.frames()[0].shape, (std::vector<int64_t>{576, 64}));
    EXPECT_EQ(in.frames()[0].dtype, DType::kF16);
  }
  {
    Outgoing out(12, 1);
    auto task = out.header().getBody().initLanguageTask();
    auto ids = task.initTokenIds(3);
    ids.set(0, 1), ids.set(1, 32000), ids.set(2, 5);
    auto sampling = task.initSampling();
    sampling.setMaxNewTokens(32);
    sampling.setTopP(0.9f);
    sampling.setSeed(42);
    sampling.initStopTokenIds(1).set(0, 2);
    task.setResumeFrom(4);
    out.add_frame(DType::kF32, {1, 8}, bytes_of(32));
    auto in = round_trip(out);
    auto t = in.header().getBody().getLanguageTask();
    EXPECT_EQ(t.getTokenIds().size(), 3u);
    EXPECT_EQ(t.getTokenIds()[1], 32000);
    EXPECT_FLOAT_EQ(t.getSampling().getTopP(), 0.9f);
    EXPECT_EQ(t.getSampling().getStopTokenIds()[0], 2);
    EXPECT_EQ(t.getResumeFrom(), 4u);
  }
  {
    Outgoing out(12);
    auto chunk = out.header().getBody().initTokenChunk();
    chunk.initTokenIds(2).set(1, 77);
    chunk.setFirstIndex(9);
    auto in = round_trip(out);
    EXPECT_EQ(in.header().getBody().getTokenChunk().getTokenIds()[1], 77);
    EXPECT_EQ(in.header().getBody().getTokenChunk().getFirstIndex(), 9u);
  }
  {
    Outgoing out(12);
    auto done = out.header().getBody().initDone();
    done.setReason(llava::schema::FinishReason::LENGTH);
    done.setGeneratedTokens(32);
    auto in = round_trip(out);
    EXPECT_EQ(in.header().getBody().getDone().getReason(), llava::schema::FinishReason::LENGTH);
    EXPECT_EQ(in.header().getBody().getDone().getGeneratedTokens(), 32u);
  }
  {
    Outgoing out(13);
    auto failure = out.header().getBody().initFailure();
    failure.setStage(llava::schema::Stage::VISION);
    failure.setMessage("image 0: not a JPEG");
    auto in = round_trip(out);
    EXPECT_EQ(in.header().getBody().getFailure().getMessage(), "image 0: not a JPEG");
    EXPECT_EQ(in.header().getBody().getFailure().getStage(), llava::schema::Stage::VISION);
  }
  {
    Outgoing out;
    out.header().getBody().initShutdown().setReason("SIGTERM");
    EXPECT_EQ(round_trip(out).kind(), Which::SHUTDOWN);
    Outgoing cancel(3);
    cancel.header().getBody().initCancel();
    EXPECT_EQ(round_trip(cancel).kind(), Which::CANCEL);
  }
}

TEST(Wire, CarriesTensorsOfEveryDtypeAndZeroToFourDims) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {5}, {2, 3}, {2, 0, 4}, {1, 2, 3, 4}};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32, DType::kI64,
                      DType::kU8}) {
    Outgoing out(1);
    out.header().getBody().initEmbeddings();
    for (const auto& shape : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      out.add_frame(dtype, shape, bytes_of(static_cast<size_t>(n) * llava::wire::dtype_size(dtype), 3));
    }
    auto in = round_trip(out);
    ASSERT_EQ(in.frames().size(), shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      const auto& frame = in.frames()[i];
      EXPECT_EQ(frame.dtype, dtype);
      EXPECT_EQ(frame.shape, shapes[i]);
      auto expected = bytes_of(frame.bytes.size(), 3);
      EXPECT_EQ(0, std::memcmp(frame.bytes.data(), expected.data(), expected.size()));
    }
  }
}

TEST(Wire, ForwardingAFrameDoesNotCopyItsPayload) {
  Outgoing first(1);
  first.header().getBody().initEmbeddings();
  first.add_frame(DType::kF16, {576, 4096}, bytes_of(576 * 4096 * 2));
  auto in = round_trip(first);
  const void* payload = in.frames()[0].bytes.data();
  Outgoing forward(1);
  forward.header().getBody().initLanguageTask();
  forward.add_frame(std::move(in.frames()[0]));
  auto parts = forward.parts();
  EXPECT_EQ(parts[1].data(), payload);
}

TEST(Wire, RejectsOutgoingFrameWhoseBytesDoNotMatchItsShape) {
  Outgoing out;
  EXPECT_THROW(out.add_frame(DType::kF32, {4}, bytes_of(15)), WireError);
}

// --- malformed messages -------------------------------------------------------------

std::vector<zmq::message_t> copy_parts(const std::vector<zmq::message_t>& parts) {
  std::vector<zmq::message_t> copy;
  for (const auto& p : parts) copy.emplace_back(p.data(), p.size());
  return copy;
}

std::vector<zmq::message_t> valid_parts(const std::vector<int64_t>& shape = {4, 8},
                                        DType dtype = DType::kF32) {
  Outgoing out(5);
  out.header().getBody().initEmbeddings().setImageCount(1);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  out.add_frame(dtype, shape, bytes_of(static_cast<size_t>(n) * llava::wire::dtype_size(dtype)));
  return out.parts();
}

// A header whose tensor description is edited after the frames were attached.
std::vector<zmq::message_t> with_info(const std::function<void(llava::schema::TensorInfo::Builder)>& edit,
                                      size_t payload_bytes) {
  capnp::MallocMessageBuilder builder;
  auto header = builder.initRoot<llava::schema::Header>();
  header.setProtocolVersion(llava::schema::PROTOCOL_VERSION);
  header.getBody().initEmbeddings();
  auto info = header.initTensors(1)[0];
  info.setDtype(llava::schema::DType::F32);
  auto shape = info.initShape(2);
  shape.set(0, 4), shape.set(1, 8);
  info.setByteLength(128);
  edit(info);
  auto words = capnp::messageToFlatArray(builder);
  std::vector<zmq::message_t> parts;
  parts.emplace_back(words.asBytes().begin(), words.asBytes().size());
  parts.push_back(bytes_of(payload_bytes));
  return parts;
}

std::vector<std::vector<zmq::message_t>> malformed_messages() {
  std::mt19937 rng(1234);
  std::vector<std::vector<zmq::message_t>> all;
  auto valid = valid_parts();
  const size_t header_size = valid[0].size();
  // 1. truncated headers
  for (int i = 0; i < 15; ++i) {
    std::vector<zmq::message_t> parts = copy_parts(valid);
    size_t cut = 1 + rng() % (header_size - 1);
    parts[0] = zmq::message_t(valid[0].data(), cut);
    all.push_back(std::move(parts));
  }
  // 2. wrong frame counts
  for (int i = 0; i < 10; ++i) {
    auto parts = copy_parts(valid);
    if (i % 2) {
      parts.pop_back();
    } else {
      for (int k = 0; k <= i / 2; ++k) parts.push_back(bytes_of(128));
    }
    all.push_back(std::move(parts));
  }
  // 3. byte lengths that lie about the shape
  for (int i = 0; i < 10; ++i) {
    uint64_t lie = 128 + 1 + rng() % 1000;
    all.push_back(with_info([&](auto info) { info.setByteLength(lie); }, 128));
  }
  // 4. frames whose size differs from the header
  for (int i = 0; i < 10; ++i) {
    all.push_back(with_info([](auto) {}, 1 + rng() % 127));
  }
  // 5. garbage headers (word-sized and not)
  for (int i = 0; i < 20; ++i) {
    size_t n = (i % 2) ? 8 * (1 + rng() % 16) : 1 + rng() % 100;
    zmq::message_t garbage(n);
    for (size_t k = 0; k < n; ++k) static_cast<uint8_t*>(garbage.data())[k] = rng() & 0xff;
    std::vector<zmq::message_t> parts;
    parts.push_back(std::move(garbage));
    parts.push_back(bytes_of(128));
    all.push_back(std::move(parts));
  }
  // 6. huge declared shapes, overflowing and merely enormous
  for (int i = 0; i < 10; ++i) {
    int64_t big = int64_t{1} << (20 + 4 * i % 43);
    all.push_back(with_info(
        [&](auto info) {
          auto shape = info.initShape(4);
          for (unsigned d = 0; d < 4; ++d) shape.set(d, big);
          info.setByteLength(static_cast<uint64_t>(big) * 4);
        },
        128));
  }
  // 7. negative dims, unknown dtypes, too many dims, bad versions, unknown kinds
  for (int i = 0; i < 8; ++i) {
    all.push_back(with_info([&](auto info) { info.getShape().set(0, -1 - i); }, 128));
    all.push_back(with_info(
        [&](auto info) { info.setDtype(static_cast<llava::schema::DType>(6 + i)); }, 128));
    all.push_back(with_info(
        [&](auto info) {
          auto shape = info.initShape(9 + i);
          for (unsigned d = 0; d < 9u + i; ++d) shape.set(d, 1);
          info.setByteLength(4);
        },
        4));
  }
  // 8. empty messages, empty header, wrong protocol version
  all.push_back({});
  {
    std::vector<zmq::message_t> parts;
    parts.emplace_back();
    all.push_back(std::move(parts));
  }
  {
    capnp::MallocMessageBuilder builder;
    auto header = builder.initRoot<llava::schema::Header>();
    header.setProtocolVersion(99);
    header.getBody().initShutdown();
    auto words = capnp::messageToFlatArray(builder);
    std::vector<zmq::message_t> parts;
    parts.emplace_back(words.asBytes().begin(), words.asBytes().size());
    all.push_back(std::move(parts));
  }
  return all;
}

TEST(Wire, RejectsEachOfOneHundredMalformedMessages) {
  auto all = malformed_messages();
  ASSERT_GE(all.size(), 100u);
  for (size_t i = 0; i < all.size(); ++i) {
    try {
      Incoming::parse(std::move(all[i]), false, Limits{});
      ADD_FAILURE() << "malformed message " << i << " was accepted";
    } catch (const WireError& e) {
      EXPECT_GT(std::strlen(e.what()), 10u) << i;
    }
  }
}

TEST(Wire, LimitsAreEnforcedBeforeReading) {
  Limits tight;
  tight.max_message_bytes = 1000;
  EXPECT_THROW(Incoming::parse(valid_parts({100, 100}, DType::kU8), false, tight), WireError);
  tight = Limits{};
  tight.max_header_bytes = 64;
  EXPECT_THROW(Incoming::parse(valid_parts(), false, tight), WireError);
  EXPECT_NO_THROW(Incoming::parse(valid_parts(), false, Limits{}));
}

// A ROUTER keeps serving while clients send malformed messages: every bad one gets a
// Failure naming the problem, and a good one afterwards still gets its answer.
TEST(Wire, ServerSurvivesMalformedMessagesOverZeroMQ) {
  zmq::context_t context;
  llava::TransportOptions options;
  auto router = llava::bind_router(context, "tcp://127.0.0.1:*", options);
  const std::string endpoint = llava::last_endpoint(router);
  std::thread server([&] {
    for (;;) {
      auto parts = llava::receive_parts(router, std::chrono::milliseconds(5000));
      if (!parts) return;
      zmq::message_t routing_id((*parts)[0].data(), (*parts)[0].size());
      Outgoing reply;
      try {
        Incoming in = Incoming::parse(std::move(*parts), true, Limits{});
        if (in.kind() == Which::SHUTDOWN) return;
        reply.header().getBody().initDone().setGeneratedTokens(
            static_cast<uint32_t>(in.frames().size()));
      } catch (const WireError& e) {
        auto failure = reply.header().getBody().initFailure();
        failure.setStage(llava::schema::Stage::COORDINATOR);
        failure.setMessage(e.what());
      }
      llava::send_message(router, reply, &routing_id);
    }
  });

  auto dealer = llava::connect_dealer(context, endpoint, options);
  auto expect_reply = [&](Which kind) -> std::string {
    auto parts = llava::receive_parts(dealer, std::chrono::milliseconds(5000));
    if (!parts) return "no reply";
    Incoming in = Incoming::parse(std::move(*parts), false, Limits{});
    EXPECT_EQ(in.kind(), kind);
    return kind == Which::FAILURE ? std::string(in.header().getBody().getFailure().getMessage().cStr())
                                  : "ok";
  };
  int rejected = 0;
  for (auto& parts : malformed_messages()) {
    if (parts.empty()) continue;  // ZeroMQ cannot send a message with no parts
    ASSERT_TRUE(llava::send_parts(dealer, std::move(parts)));
    std::string message = expect_reply(Which::FAILURE);
    EXPECT_NE(message, "no reply");
    ++rejected;
  }
  EXPECT_GE(rejected, 100);
  ASSERT_TRUE(llava::send_parts(dealer, valid_parts()));
  EXPECT_EQ(expect_reply(Which::DONE), "ok");

  Outgoing stop;
  stop.header().getBody().initShutdown();
  llava::send_message(dealer, stop);
  server.join();
}

TEST(Transport, BindingAPortInUseFailsFast) {
  zmq::context_t context;
  auto first = llava::bind_router(context, "tcp://127.0.0.1:*", {});
  const std::string endpoint = llava::last_endpoint(first);
  try {
    llava::bind_router(context, endpoint, {});
    FAIL() << "a second bind of " << endpoint << " succeeded";
  } catch (const llava::TransportError& e) {
    EXPECT_NE(std::string(e.what()).find(endpoint), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
}

TEST(Transport, BindingAnIpcFileAnotherProcessListensOnIsRefused) {
  const std::string folder = testing::TempDir() + "ipc-clash-" + std::to_string(getpid());
  std::filesystem::create_directories(folder);
  const std::string endpoint = "ipc://" + folder + "/coordinator";
  zmq::context_t context;
  auto first = llava::bind_router(context, endpoint, {});
  try {
    llava::bind_router(context, endpoint, {});
    FAIL() << "a second bind of " << endpoint << " took the socket file over";
  } catch (const llava::TransportError& e) {
    EXPECT_NE(std::string(e.what()).find(endpoint), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(folder);
}

// A socket file left by a process that ended without removing it: nobody listens, so it is
// bound again.
TEST(Transport, AStaleIpcFileIsBoundAgain) {
  const std::string folder = testing::TempDir() + "ipc-stale-" + std::to_string(getpid());
  std::filesystem::create_directories(folder);
  const std::string path = folder + "/coordinator";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ::close(fd);  // the file stays, with no listener
  ASSERT_TRUE(std::filesystem::exists(path));
  zmq::context_t context;
  EXPECT_NO_THROW(llava::bind_router(context, "ipc://" + path, {}));
  std::filesystem::remove_all(folder);
}

TEST(Transport, ASendToAPeerAtItsHighWaterMarkIsBusyNotGone) {
  zmq::context_t context;
  auto router = llava::bind_router(context, "tcp://127.0.0.1:*", {});
  auto dealer = llava::connect_dealer(context, llava::last_endpoint(router), {});
  Outgoing hello;
  hello.header().getBody().initHeartbeat();
  ASSERT_TRUE(llava::send_message(dealer, hello));
  auto parts = llava::receive_parts(router, std::chrono::seconds(5));
  ASSERT_TRUE(parts.has_value());
  const zmq::message_t& id = (*parts)[0];
  // The dealer never reads: the router's queue to it fills, then sends are refused for now.
  int sent = 0;
  llava::SendResult result = llava::SendResult::kSent;
  while (sent < 100000) {
    Outgoing beat;
    beat.header().getBody().initHeartbeat();
    result = llava::try_send_parts(router, beat.parts(), &id);
    if (result != llava::SendResult::kSent) break;
    ++sent;
  }
  EXPECT_EQ(result, llava::SendResult::kBusy);
  EXPECT_GE(sent, llava::kHighWaterMark);
  zmq::message_t nobody("nobody", 6);
  Outgoing out;
  out.header().getBody().initShutdown();
  EXPECT_EQ(llava::try_send_parts(router, out.parts(), &nobody), llava::SendResult::kGone);
}

TEST(Transport, SendToAnUnknownPeerIsReportedNotDropped) {
  zmq::context_t context;
  auto router = llava::bind_router(context, "tcp://127.0.0.1:*", {});
  zmq::message_t nobody("nobody", 6);
  Outgoing out;
  out.header().getBody().initShutdown();
  EXPECT_FALSE(llava::send_message(router, out, &nobody));
}

}  // namespace
