// safetensors: 8-byte little-endian header length, JSON header, data. The header is not
// trusted: offsets, sizes, dtypes and shapes are all checked against the file.
#include "stages/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/errors.h"

namespace llava {

struct SafetensorsFile::Mapping {
  void* address = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (address != MAP_FAILED) munmap(address, size);
  }
};

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

size_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

}  // namespace

at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "F64") return at::kDouble;
  if (dtype == "I64") return at::kLong;
  if (dtype == "I32") return at::kInt;
  if (dtype == "U8") return at::kByte;
  if (dtype == "I8") return at::kChar;
  if (dtype == "BOOL") return at::kBool;
  throw CheckpointError(where + ": dtype " + dtype + " is not supported");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw CheckpointError(path + ": cannot stat");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw CheckpointError(path + ": " + std::to_string(file_size) +
                          " bytes is too short for a safetensors file");
  }
  mapping_ = std::make_shared<Mapping>();
  mapping_->size = file_size;
  mapping_->address = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_->address == MAP_FAILED) throw CheckpointError(path + ": mmap failed");
  const auto* bytes = static_cast<const uint8_t*>(mapping_->address);

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    throw CheckpointError(path + ": header length " + std::to_string(header_size) +
                          " does not fit in the " + std::to_string(file_size) + "-byte file");
  }
  data_ = bytes + 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_size);
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
      entry.shape = value["shape"].get<std::vector<int64_t>>();
      auto offsets = value["data_offsets"].get<std::vector<uint64_t>>();
      if (offsets.size() != 2) throw CheckpointError(where + ": data_offsets needs two numbers");
      entry.begin = offsets[0];
      entry.end = offsets[1];
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
    entries_.emplace(name, std::move(entry));
  }
}

SafetensorsFile::~SafetensorsFile() = default;

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  static const std::map<at::ScalarType, const char*> kNames = {
      {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kDouble, "F64"},
      {at::kLong, "I64"},  {at::kInt, "I32"},  {at::kByte, "U8"}};
  nlohmann::json header = nlohmann::json::object();
  std::vector<at::Tensor> host;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto it = kNames.find(tensor.scalar_type());
    if (it == kNames.end()) throw CheckpointError(path + ": cannot save dtype of '" + name + "'");
    host.push_back(tensor.to(at::kCPU).contiguous());
    const uint64_t bytes = static_cast<uint64_t>(host.back().nbytes());
    header[name] = {{"dtype", it->second}, {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-aligned
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw CheckpointError(path + ": cannot write (" + std::strerror(errno) + ")");
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  bool ok = std::fwrite(length, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const auto& t : host) ok = ok && std::fwrite(t.data_ptr(), 1, t.nbytes(), f) == t.nbytes();
  ok = std::fclose(f) == 0 && ok;
  if (!ok) throw CheckpointError(path + ": write failed");
}

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw CheckpointError(path_ + ": no tensor '" + name + "'");
  return it->second;
}

at::Tensor SafetensorsFile::view(const std::string& name) const {
  const TensorEntry& e = entry(name);
  auto dtype = safetensors_dtype(e.dtype, path_ + ": tensor '" + name + "'");
  auto keep_alive = mapping_;
  // The data is read-only; at::from_blob wants a non-const pointer but nothing writes it
  // (weights are copied to their target device and dtype before use).
  void* data = const_cast<uint8_t*>(data_ + e.begin);
  return at::from_blob(data, e.shape, [keep_alive](void*) {}, at::TensorOptions().dtype(dtype));
}

}  // namespace llava
