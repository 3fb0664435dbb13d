// The safetensors header, checked against the file: LibTorch-free, so that it can be
// fuzzed on its own.
#include "stages/checkpoint/safetensors_header.h"

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/json_depth.h"

namespace llava {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

size_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

// JSON integers only: nlohmann converts a float such as 1e30 to an integer with a cast
// whose result is undefined.
uint64_t unsigned_of(const nlohmann::json& v, const std::string& where) {
  if (!v.is_number_unsigned()) throw CheckpointError(where + ": expected a non-negative integer");
  return v.get<uint64_t>();
}

int64_t signed_of(const nlohmann::json& v, const std::string& where) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    throw CheckpointError(where + ": integer out of range");
  }
  if (!v.is_number_integer()) throw CheckpointError(where + ": expected an integer");
  return v.get<int64_t>();
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t file_size,
                                           const std::string& path) {
  if (file_size < 8) {
    throw CheckpointError(path + ": " + std::to_string(file_size) +
                          " bytes is too short for a safetensors file");
  }

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    throw CheckpointError(path + ": header length " + std::to_string(header_size) +
                          " does not fit in the " + std::to_string(file_size) + "-byte file");
  }
  SafetensorsHeader out;
  out.data_offset = 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;

  nlohmann::json header;
  try {
    header = parse_json(std::string_view(reinterpret_cast<const char*>(bytes) + 8, header_size));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(path + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw CheckpointError(path + ": header is not a JSON object");
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      throw CheckpointError(where + ": needs dtype, shape and data_offsets");
    }
    TensorEntry entry;
    try {
      entry.dtype = value["dtype"].get<std::string>();
      const auto& shape = value["shape"];
      const auto& offsets = value["data_offsets"];
      if (!shape.is_array() || !offsets.is_array() || offsets.size() != 2) {
        throw CheckpointError(where + ": shape must be a list and data_offsets two numbers");
      }
      for (const auto& d : shape) entry.shape.push_back(signed_of(d, where + ": shape"));
      entry.begin = unsigned_of(offsets[0], where + ": data_offsets");
      entry.end = unsigned_of(offsets[1], where + ": data_offsets");
    } catch (const nlohmann::json::exception& e) {
      throw CheckpointError(where + ": malformed entry (" + e.what() + ")");
    }
    const size_t element = dtype_bytes(entry.dtype);
    if (element == 0) throw CheckpointError(where + ": unknown dtype '" + entry.dtype + "'");
    uint64_t expected = element;
    for (int64_t d : entry.shape) {
      if (d < 0) throw CheckpointError(where + ": negative dimension " + std::to_string(d));
      if (d != 0 && expected > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) {
        throw CheckpointError(where + ": shape overflows 64 bits");
      }
      expected *= static_cast<uint64_t>(d);
    }
    if (entry.begin > entry.end || entry.end > data_size) {
      throw CheckpointError(where + ": bytes [" + std::to_string(entry.begin) + ", " +
                            std::to_string(entry.end) + ") lie outside the " +
                            std::to_string(data_size) + "-byte data section (truncated file?)");
    }
    if (entry.end - entry.begin != expected) {
      throw CheckpointError(where + ": holds " + std::to_string(entry.end - entry.begin) +
                            " bytes but dtype and shape need " + std::to_string(expected));
    }
    out.entries.emplace(name, std::move(entry));
  }
  return out;
}

}  // namespace llava
