// Reading a YAML file key by key: the text to a tree (duplicate keys refused), and
// YamlSection, one mapping read with typed getters whose errors name file:line:column and
// the key. common/config.cpp's schema is written with it; it knows no key of its own.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace llava {

// The text as a YAML tree; throws ConfigError "file:line:column: what" for a syntax error
// or a key given twice in one mapping.
YAML::Node load_yaml(const std::string& text, const std::string& file);

// Reads one YAML mapping, remembering which keys were read so that finish() can report
// the unknown ones with a did-you-mean.
class YamlSection {
 public:
  YamlSection(const YAML::Node& node, std::string key_path, const std::string& file);

  [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const;
  [[noreturn]] void fail_at(const YAML::Mark& mark, const std::string& what) const;
  std::string key_name(const std::string& key) const;  // "section.key"

  // The key's node (undefined when absent), and the key counts as known.
  YAML::Node find(const std::string& key);
  YamlSection child(const std::string& key);
  YAML::Mark mark() const;
  bool present() const;

  // Each getter returns `fallback` when the key is absent and fails on a value it cannot use.
  std::string scalar(const std::string& key, const YAML::Node& value) const;
  std::string str(const std::string& key, const std::string& fallback);
  long long integer(const std::string& key, long long fallback, long long lo, long long hi);
  double real(const std::string& key, double fallback, double lo, double hi, bool lo_open = false);
  bool boolean(const std::string& key, bool fallback);
  uint64_t bytes(const std::string& key, uint64_t fallback);   // "22GiB", "512MiB"
  uint64_t millis(const std::string& key, uint64_t fallback);  // "500ms", "2s"; above 0

  template <typename Enum>
  Enum choice(const std::string& key, Enum fallback,
              const std::vector<std::pair<std::string, Enum>>& options) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    std::string names;
    for (const auto& [name, option] : options) {
      if (name == text) return option;
      names += (names.empty() ? "" : ", ") + name;
    }
    fail(value, key_name(key) + ": '" + text + "' is not one of " + names);
  }

  // Unknown keys are errors: a typo must not silently fall back to a default.
  void finish() const;

 private:
  // A scalar that `parse` must consume whole, within [lo, hi] ((lo, hi] when lo_open).
  template <typename T, typename Parse>
  T number(const std::string& key, T fallback, T lo, T hi, bool lo_open, const char* what,
           Parse parse);

  YAML::Node node_;
  std::string path_;
  const std::string& file_;
  std::set<std::string> known_;
};

}  // namespace llava
