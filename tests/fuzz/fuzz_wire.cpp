// libFuzzer target: the message receiver's checks (Incoming::parse). Input layout:
// [u32 header length][header][u32 frame length][frame]... (little-endian lengths).
// With LLAVA_PIPE_WRITE_SEEDS=DIR set, writes well-formed seeds there and exits.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/wire.h"

namespace {

std::string encode(std::vector<zmq::message_t>& parts) {
  std::string out;
  for (auto& p : parts) {
    uint32_t n = static_cast<uint32_t>(p.size());
    out.append(reinterpret_cast<const char*>(&n), 4);
    out.append(static_cast<const char*>(p.data()), p.size());
  }
  return out;
}

void write_seeds(const std::string& dir) {
  int index = 0;
  auto save = [&](llava::wire::Outgoing& message) {
    auto parts = message.parts();
    std::ofstream(dir + "/seed" + std::to_string(index++), std::ios::binary) << encode(parts);
  };
  {
    llava::wire::Outgoing m(3, 1);
    auto task = m.header().getBody().initLanguageTask();
    task.initTokenIds(4).set(1, 32000);
    task.initSampling().setMaxNewTokens(8);
    m.add_frame(llava::wire::DType::kF16, {2, 4}, zmq::message_t(16));
    save(m);
  }
  {
    llava::wire::Outgoing m(4);
    m.header().getBody().initVisionTask().setImageCount(1);
    m.add_frame(llava::wire::DType::kU8, {5}, zmq::message_t("abcde", 5));
    save(m);
  }
  {
    llava::wire::Outgoing m;
    m.header().getBody().initFailure().setMessage("image 1 of 1: not a readable image");
    save(m);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("LLAVA_PIPE_WRITE_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<zmq::message_t> parts;
  size_t at = 0;
  while (at + 4 <= size && parts.size() < 300) {
    uint32_t n;
    std::memcpy(&n, data + at, 4);
    at += 4;
    n = static_cast<uint32_t>(std::min<size_t>(n, size - at));
    parts.emplace_back(data + at, n);
    at += n;
  }
  llava::wire::Limits limits;
  limits.max_message_bytes = 1 << 20;
  try {
    llava::wire::Incoming message = llava::wire::Incoming::parse(std::move(parts), false, limits);
    (void)message.header().getBody().which();
  } catch (const llava::WireError&) {
  }
  return 0;
}
