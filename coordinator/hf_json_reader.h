// Reading tokenizer.json's fields with errors that name the file and the JSON path
// ("tokenizer.json: model.merges[3]: ..."), as CheckpointError; and the message for a
// component this tokenizer does not implement.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace llava::hf {

using Json = nlohmann::json;

struct JsonReader {
  std::string origin;  // the file, for messages

  [[noreturn]] void fail(const std::string& path, const std::string& what) const;
  [[noreturn]] void unsupported(const std::string& path, const Json& node) const;
  const Json& at(const Json& node, const std::string& path, const char* key) const;
  std::string string(const Json& node, const std::string& path, const char* key) const;
  bool boolean(const Json& node, const std::string& path, const char* key, bool fallback) const;
  std::string type(const Json& node, const std::string& path) const;
  // A Replace pattern: {"String": "..."}; a Regex pattern is not supported.
  std::string pattern(const Json& node, const std::string& path) const;
};

// A string field that must hold exactly one character (a Metaspace replacement...).
std::string read_char(const JsonReader& r, const Json& node, const std::string& path,
                      const char* key);

}  // namespace llava::hf
