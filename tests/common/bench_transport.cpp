// Throughput of embedding-sized frames (576 x 4096 fp16 = 4.5 MiB) through our wire format,
// DEALER -> ROUTER, over ipc:// and tcp://127.0.0.1, and over ipc:// with the frames in
// shared memory (the sender writes each into a range of a file in /dev/shm, as a vision
// worker does, and sends the range). Prints a table and one JSON line.
//   bench_transport [--iterations N]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "common/shared_memory.h"
#include "common/transport.h"
#include "common/wire.h"

namespace {

struct Result {
  std::string transport;
  double gb_per_s;
  double ms_per_message;
};

Result measure(const std::string& endpoint_pattern, int iterations, bool shared = false) {
  constexpr int64_t kTokens = 576, kHidden = 4096;
  const size_t bytes = kTokens * kHidden * 2;
  zmq::context_t context;
  llava::TransportOptions options;
  auto router = llava::bind_router(context, endpoint_pattern, options);
  const std::string endpoint = llava::last_endpoint(router);
  auto memory = shared ? llava::SharedMemory::create(2 * bytes) : nullptr;
  llava::SharedMemoryMaps maps;  // the receiver's
  const llava::wire::SharedResolver resolve = llava::wire::resolve_through(maps);
  std::thread sender([&] {
    auto dealer = llava::connect_dealer(context, endpoint, options);
    zmq::message_t payload(bytes);
    std::memset(payload.data(), 0x3c, bytes);
    for (int i = 0; i < iterations + 1; ++i) {
      llava::wire::Outgoing out(static_cast<uint64_t>(i));
      out.header().getBody().initEmbeddings().setImageCount(1);
      if (shared) {  // written into one of two ranges in turn, sent as the range
        const uint64_t offset = (i % 2) * bytes;
        std::memcpy(memory->data() + offset, payload.data(), bytes);
        out.add_frame(llava::wire::shared_frame(memory, offset, llava::wire::DType::kF16,
                                                {kTokens, kHidden}));
        out.send_shared_as_ranges();
      } else {
        zmq::message_t frame(payload.data(), payload.size());  // a fresh frame each time
        out.add_frame(llava::wire::DType::kF16, {kTokens, kHidden}, std::move(frame));
      }
      auto parts = out.parts();
      for (size_t p = 0; p < parts.size(); ++p) {
        dealer.send(parts[p], p + 1 < parts.size() ? zmq::send_flags::sndmore
                                                   : zmq::send_flags::none);
      }
    }
    // Wait for the receiver's word that everything arrived before closing.
    zmq::message_t ack;
    (void)dealer.recv(ack);
  });
  llava::wire::Limits limits;
  auto receive_one = [&] {
    auto parts = llava::receive_parts(router, std::chrono::milliseconds(30000));
    if (!parts) throw std::runtime_error("bench: no message within 30 s");
    return llava::wire::Incoming::parse(std::move(*parts), true, limits, resolve);
  };
  auto first = receive_one();  // connection set-up stays out of the timing
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) receive_one();
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  zmq::message_t routing(first.routing_id().data(), first.routing_id().size());
  router.send(routing, zmq::send_flags::sndmore);
  router.send(zmq::str_buffer("done"));
  sender.join();
  return {shared ? "ipc_shared_memory" : endpoint_pattern.substr(0, 3),
          bytes * double(iterations) / seconds / 1e9, seconds * 1e3 / iterations};
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 200;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--iterations") iterations = std::stoi(argv[i + 1]);
  }
  const std::string ipc = "ipc://@llava-bench-" + std::to_string(getpid());
  Result results[] = {measure(ipc, iterations), measure("tcp://127.0.0.1:*", iterations),
                      measure(ipc + "-shared", iterations, true)};
  std::printf("%-18s %10s %14s\n", "transport", "GB/s", "ms/embedding");
  for (const auto& r : results) {
    std::printf("%-18s %10.2f %14.3f\n", r.transport.c_str(), r.gb_per_s, r.ms_per_message);
  }
  std::printf("{\"bench\": \"transport\", \"frame_bytes\": %d, \"iterations\": %d",
              576 * 4096 * 2, iterations);
  for (const auto& r : results) {
    std::printf(", \"%s_gb_per_s\": %.3f, \"%s_ms_per_embedding\": %.4f", r.transport.c_str(),
                r.gb_per_s, r.transport.c_str(), r.ms_per_message);
  }
  std::printf("}\n");
  return 0;
}
