// libFuzzer target: the safetensors header parser, on whole file contents.
#include <cstdint>

#include "common/errors.h"
#include "stages/checkpoint/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto header = llava::parse_safetensors_header(data, size, "fuzz.safetensors");
    for (const auto& [name, entry] : header.entries) {
      // The checks promise every tensor lies inside the file: touch its bytes.
      volatile uint8_t sink = 0;
      for (uint64_t i = entry.begin; i < entry.end; i += 4096) sink ^= data[header.data_offset + i];
      (void)sink;
    }
  } catch (const llava::CheckpointError&) {
  }
  return 0;
}
