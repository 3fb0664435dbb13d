// tokenizer.json's fields read with JSON-path errors (see hf_json_reader.h).
#include "coordinator/hf_json_reader.h"

#include "common/errors.h"
#include "coordinator/hf_text.h"

namespace llava::hf {

void JsonReader::fail(const std::string& path, const std::string& what) const {
  throw CheckpointError(origin + ": " + path + ": " + what);
}

void JsonReader::unsupported(const std::string& path, const Json& node) const {
  fail(path, "unsupported " + node.dump().substr(0, 120) +
                 " (supported: the BPE model; normalizers Sequence, Prepend, Replace; "
                 "pre-tokenizers Sequence, Metaspace; decoders Sequence, Replace, ByteFallback, "
                 "Fuse, Strip, Metaspace; post-processor TemplateProcessing)");
}

const Json& JsonReader::at(const Json& node, const std::string& path, const char* key) const {
  if (!node.is_object() || !node.contains(key)) fail(path, std::string("missing \"") + key + "\"");
  return node.at(key);
}

std::string JsonReader::string(const Json& node, const std::string& path, const char* key) const {
  const Json& value = at(node, path, key);
  if (!value.is_string()) fail(path + "." + key, "expected a string, found " + value.dump());
  return value.get<std::string>();
}

bool JsonReader::boolean(const Json& node, const std::string& path, const char* key,
                         bool fallback) const {
  if (!node.contains(key) || node.at(key).is_null()) return fallback;
  if (!node.at(key).is_boolean()) fail(path + "." + key, "expected true or false");
  return node.at(key).get<bool>();
}

std::string JsonReader::type(const Json& node, const std::string& path) const {
  return string(node, path, "type");
}

std::string JsonReader::pattern(const Json& node, const std::string& path) const {
  const Json& p = at(node, path, "pattern");
  if (p.is_object() && p.contains("String") && p.at("String").is_string()) {
    std::string s = p.at("String").get<std::string>();
    if (s.empty()) fail(path + ".pattern", "an empty pattern");
    return s;
  }
  fail(path + ".pattern", "only {\"String\": ...} patterns are supported, found " + p.dump());
}

std::string read_char(const JsonReader& r, const Json& node, const std::string& path,
                      const char* key) {
  std::string c = r.string(node, path, key);
  size_t length = 0;
  if (c.empty() || (code_point_at(c, 0, &length), length != c.size())) {
    r.fail(path + "." + key, "expected one character, found \"" + c + "\"");
  }
  return c;
}

}  // namespace llava::hf
