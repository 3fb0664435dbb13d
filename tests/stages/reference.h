// Test helpers: paths of the committed test data, and reading reference tensors.
#pragma once

#include <ATen/ATen.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "stages/checkpoint/safetensors.h"

namespace llava::test {

inline std::string data_path(const std::string& relative) {
  return std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/" + relative;
}

// Every tensor of a safetensors file, copied out of the mapping.
inline std::map<std::string, at::Tensor> load_tensors_at(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, entry] : file.entries()) out[name] = file.view(name).clone();
  return out;
}

inline std::map<std::string, at::Tensor> load_tensors(const std::string& relative) {
  return load_tensors_at(data_path(relative));
}

inline nlohmann::json load_json(const std::string& relative) {
  nlohmann::json j;
  std::ifstream(data_path(relative)) >> j;
  return j;
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// max |a - b| / max |b|: the error relative to the reference's scale.
inline double relative_error(const at::Tensor& a, const at::Tensor& b) {
  auto a64 = a.to(at::kDouble), b64 = b.to(at::kDouble);
  return (a64 - b64).abs().max().item<double>() / b64.abs().max().item<double>();
}

}  // namespace llava::test
