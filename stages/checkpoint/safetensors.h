// A safetensors file, memory-mapped: the JSON header is parsed and every tensor's dtype,
// shape and byte range is checked against the file before any tensor can be read.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "stages/checkpoint/safetensors_header.h"

namespace llava {

class SafetensorsFile {
 public:
  // Throws CheckpointError naming the file and, where it applies, the tensor.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorEntry>& entries() const { return entries_; }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  const TensorEntry& entry(const std::string& name) const;

  // A CPU tensor viewing the mapped bytes (no copy). It keeps the mapping alive, so it
  // may outlive this object.
  at::Tensor view(const std::string& name) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorEntry> entries_;
};

// Writes tensors (any device; copied to the host, contiguous) as a safetensors file.
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors);

// The ATen dtype of a safetensors dtype string; throws for ones we do not read.
at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where);

}  // namespace llava
