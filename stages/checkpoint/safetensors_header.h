// Parsing a safetensors file's header: 8-byte little-endian length, JSON, and for each
// tensor its dtype, shape and byte range, every one checked against the file's size.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llava {

struct TensorEntry {
  std::string dtype;  // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;  // where the data section starts in the file
  std::map<std::string, TensorEntry> entries;
};

// Throws CheckpointError naming `path` and the tensor.
SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t file_size,
                                           const std::string& path);

}  // namespace llava
