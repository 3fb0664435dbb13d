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
  SafetensorsHeader header = parse_safetensors_header(bytes, file_size, path);
  data_ = bytes + header.data_offset;
  entries_ = std::move(header.entries);
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
