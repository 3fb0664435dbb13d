// The YAML reader under common/config.cpp: loading with file:line:column errors, refusing
// duplicate keys, and YamlSection's typed getters with a did-you-mean for unknown keys.
#include "common/yaml_reader.h"

#include <yaml-cpp/depthguard.h>

#include <algorithm>
#include <map>
#include <sstream>

#include "common/config.h"
#include "common/errors.h"
#include "common/units.h"

namespace llava {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// YAML maps keep every duplicate key (a lookup finds the first): refuse them, naming both
// lines, rather than let one value silently win.
void refuse_duplicate_keys(const YAML::Node& node, const std::string& path,
                           const std::string& file) {
  if (node.IsSequence()) {
    for (const auto& item : node) refuse_duplicate_keys(item, path, file);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& entry : node) {
    const std::string key = entry.first.IsScalar() ? entry.first.Scalar() : "";
    const std::string name = path.empty() ? key : path + "." + key;
    if (entry.first.IsScalar()) {
      auto [first, inserted] = seen.emplace(key, entry.first.Mark());
      if (!inserted) {
        const YAML::Mark at = entry.first.Mark();
        throw ConfigError(file + ":" + std::to_string(at.line + 1) + ":" +
                          std::to_string(at.column + 1) + ": " + name +
                          ": duplicate key (first given at line " +
                          std::to_string(first->second.line + 1) + "); give each key once");
      }
    }
    refuse_duplicate_keys(entry.second, name, file);
  }
}

}  // namespace

YAML::Node load_yaml(const std::string& text, const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {  // yaml-cpp's own guard ("bad file" otherwise)
    std::ostringstream out;
    out << file << ":" << e.mark.line + 1 << ":" << e.mark.column + 1
        << ": nested too deep (yaml-cpp stops at " << e.depth() << " levels)";
    throw ConfigError(out.str());
  } catch (const YAML::Exception& e) {
    std::ostringstream out;
    out << file << ":" << e.mark.line + 1 << ":" << e.mark.column + 1 << ": " << e.msg;
    throw ConfigError(out.str());
  }
  refuse_duplicate_keys(root, "", file);
  return root;
}

YamlSection::YamlSection(const YAML::Node& node, std::string key_path, const std::string& file)
    : node_(node), path_(std::move(key_path)), file_(file) {
  if (node_ && !node_.IsNull() && !node_.IsMap()) fail(node_, "expected a mapping of keys");
}

void YamlSection::fail(const YAML::Node& at, const std::string& what) const {
  fail_at(at.Mark(), what);
}

void YamlSection::fail_at(const YAML::Mark& mark, const std::string& what) const {
  std::ostringstream out;
  out << file_;
  if (mark.line >= 0) out << ":" << mark.line + 1 << ":" << mark.column + 1;
  out << ": " << what;
  throw ConfigError(out.str());
}

std::string YamlSection::key_name(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

YAML::Node YamlSection::find(const std::string& key) {
  known_.insert(key);
  static const YAML::Node kEmptyMap(YAML::NodeType::Map);
  if (!node_ || !node_.IsMap()) return kEmptyMap[key];  // an undefined node: "absent"
  return node_[key];
}

YamlSection YamlSection::child(const std::string& key) {
  return YamlSection(find(key), key_name(key), file_);
}

YAML::Mark YamlSection::mark() const {
  return node_ ? node_.Mark() : YAML::Mark::null_mark();
}

bool YamlSection::present() const {
  return node_ && !node_.IsNull();
}

std::string YamlSection::scalar(const std::string& key, const YAML::Node& value) const {
  if (!value.IsScalar()) fail(value, key_name(key) + ": expected a single value");
  return value.Scalar();
}

std::string YamlSection::str(const std::string& key, const std::string& fallback) {
  YAML::Node value = find(key);
  return value ? scalar(key, value) : fallback;
}

template <typename T, typename Parse>
T YamlSection::number(const std::string& key, T fallback, T lo, T hi, bool lo_open,
                      const char* what, Parse parse) {
  YAML::Node value = find(key);
  if (!value) return fallback;
  std::string text = scalar(key, value);
  T parsed{};
  size_t used = 0;
  try {
    parsed = parse(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) {
    fail(value, key_name(key) + ": expected " + what + ", got '" + text + "'");
  }
  if (!in_range(parsed, lo, hi, lo_open)) {
    fail(value, key_name(key) + ": " + text + " is out of range " + range_text(lo, hi, lo_open));
  }
  return parsed;
}

long long YamlSection::integer(const std::string& key, long long fallback, long long lo,
                               long long hi) {
  return number<long long>(key, fallback, lo, hi, false, "a whole number",
                           [](const std::string& t, size_t* used) { return std::stoll(t, used); });
}

double YamlSection::real(const std::string& key, double fallback, double lo, double hi,
                         bool lo_open) {
  return number<double>(key, fallback, lo, hi, lo_open, "a number",
                        [](const std::string& t, size_t* used) { return std::stod(t, used); });
}

bool YamlSection::boolean(const std::string& key, bool fallback) {
  YAML::Node value = find(key);
  if (!value) return fallback;
  std::string text = scalar(key, value);
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  fail(value, key_name(key) + ": expected true or false, got '" + text + "'");
}

uint64_t YamlSection::bytes(const std::string& key, uint64_t fallback) {
  YAML::Node value = find(key);
  if (!value) return fallback;
  std::string text = scalar(key, value);
  auto parsed = parse_bytes(text);
  if (!parsed) {
    fail(value, key_name(key) + ": expected a size such as 22GiB or 512MiB, got '" + text + "'");
  }
  return *parsed;
}

uint64_t YamlSection::millis(const std::string& key, uint64_t fallback) {
  YAML::Node value = find(key);
  if (!value) return fallback;
  std::string text = scalar(key, value);
  auto parsed = parse_millis(text);
  if (!parsed || *parsed == 0) {
    fail(value,
         key_name(key) + ": expected a positive duration such as 500ms or 2s, got '" + text + "'");
  }
  return *parsed;
}

void YamlSection::finish() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& entry : node_) {
    const std::string key = entry.first.Scalar();
    if (known_.count(key)) continue;
    std::string best;
    size_t best_distance = 3;
    for (const auto& candidate : known_) {
      size_t d = edit_distance(key, candidate);
      if (d < best_distance) best_distance = d, best = candidate;
    }
    std::string what = "unknown key '" + key_name(key) + "'";
    if (!best.empty()) {
      what += "; did you mean '" + best + "'?";
    } else {
      std::string all;
      for (const auto& k : known_) all += (all.empty() ? "" : ", ") + k;
      what += " (known here: " + all + ")";
    }
    fail(entry.first, what);
  }
}

}  // namespace llava
