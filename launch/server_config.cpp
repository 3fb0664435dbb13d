// The `server:` section, read with yaml-cpp and checked key by key like common/config.cpp.
#include "launch/server_config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/errors.h"
#include "common/units.h"

namespace llava {
namespace {

class ServerReader {
 public:
  ServerReader(YAML::Node node, const std::string& file) : node_(std::move(node)), file_(file) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const {
    std::ostringstream out;
    out << file_;
    const YAML::Mark mark = at.Mark();
    if (mark.line >= 0) out << ":" << mark.line + 1 << ":" << mark.column + 1;
    out << ": server." << what;
    throw ConfigError(out.str());
  }

  YAML::Node find(const std::string& key) {
    known_.insert(key);
    return node_[key];
  }

  std::string scalar(const std::string& key) {
    YAML::Node value = find(key);
    if (!value) return "";
    if (!value.IsScalar()) fail(value, key + ": expected a single value");
    return value.Scalar();
  }

  uint64_t bytes(const std::string& key, uint64_t fallback, uint64_t lo) {
    const std::string text = scalar(key);
    if (text.empty()) return fallback;
    auto value = parse_bytes(text);
    if (!value || *value < lo) {
      fail(node_[key], key + ": '" + text + "' is not a size of at least " + format_bytes(lo) +
                           " (e.g. 64MiB)");
    }
    return *value;
  }

  // A duration above 0; with `whole_seconds`, a whole number of seconds, 0 included.
  uint64_t millis(const std::string& key, uint64_t fallback, bool whole_seconds = false) {
    const std::string text = scalar(key);
    if (text.empty()) return fallback;
    auto value = parse_millis(text);
    if (whole_seconds && (!value || *value % 1000 != 0)) {
      fail(node_[key], key + ": '" + text + "' is not a whole number of seconds (e.g. 0s, 2s)");
    }
    if (!value || (*value == 0 && !whole_seconds))
      fail(node_[key], key + ": '" + text + "' is not a duration (e.g. 10s)");
    return *value;
  }

  int integer(const std::string& key, int fallback, int lo, int hi) {
    const std::string text = scalar(key);
    if (text.empty()) return fallback;
    size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || value < lo || value > hi) {
      fail(node_[key], key + ": '" + text + "' is not a whole number in [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "]");
    }
    return static_cast<int>(value);
  }

  uint64_t count(const std::string& key, uint64_t fallback) {
    const std::string text = scalar(key);
    if (text.empty()) return fallback;
    if (text.find_first_not_of("0123456789") != std::string::npos || text.size() > 15 ||
        std::stoull(text) == 0) {
      fail(node_[key], key + ": '" + text + "' is not a whole number above 0");
    }
    return std::stoull(text);
  }

  bool boolean(const std::string& key, bool fallback) {
    const std::string text = scalar(key);
    if (text.empty()) return fallback;
    if (text == "true") return true;
    if (text == "false") return false;
    fail(node_[key], key + ": '" + text + "' is not true or false");
  }

  void finish() const {
    for (const auto& entry : node_) {
      const std::string key = entry.first.Scalar();
      if (known_.count(key)) continue;
      std::string all;
      for (const auto& k : known_) all += (all.empty() ? "" : ", ") + k;
      fail(entry.first, key + ": unknown key (known here: " + all + ")");
    }
  }

 private:
  YAML::Node node_;
  const std::string& file_;
  std::set<std::string> known_;
};

}  // namespace

ServerSection parse_server_section(const std::string& yaml_text, const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  ServerSection s;
  YAML::Node node = root.IsMap() ? root["server"] : YAML::Node();
  if (node && !node.IsNull()) {
    if (!node.IsMap()) {
      throw ConfigError(path + ":" + std::to_string(node.Mark().line + 1) +
                        ": server: expected a mapping of keys");
    }
    ServerReader r(node, path);
    s.max_body_bytes = r.bytes("max_body_bytes", s.max_body_bytes, 1024);
    s.max_images = r.integer("max_images", s.max_images, 0, 16);
    s.max_image_bytes = r.bytes("max_image_bytes", s.max_image_bytes, 1024);
    s.max_image_pixels = r.count("max_image_pixels", s.max_image_pixels);
    s.request_timeout_ms = r.millis("request_timeout", s.request_timeout_ms);
    s.max_connections = r.integer("max_connections", s.max_connections, 1, 4096);
    s.keep_alive_ms = r.millis("keep_alive", s.keep_alive_ms, /*whole_seconds=*/true);
    s.receive_timeout_ms = r.millis("receive_timeout", s.receive_timeout_ms);
    s.api_key = r.scalar("api_key");
    s.allow_remote_images = r.boolean("allow_remote_images", s.allow_remote_images);
    s.remote_image_timeout_ms = r.millis("remote_image_timeout", s.remote_image_timeout_ms);
    s.allow_private_image_addresses =
        r.boolean("allow_private_image_addresses", s.allow_private_image_addresses);
    s.image_root = r.scalar("image_root");
    r.finish();
    if (!s.image_root.empty()) {
      std::filesystem::path root_path(s.image_root);
      if (root_path.is_relative()) {
        root_path = std::filesystem::path(path).parent_path() / root_path;
      }
      std::error_code error;
      auto canonical = std::filesystem::canonical(root_path, error);
      if (error || !std::filesystem::is_directory(canonical)) {
        throw ConfigError(path + ": server.image_root: " + root_path.string() + " is not a folder");
      }
      s.image_root = canonical.string();
    }
  }
  if (s.api_key.empty()) {
    if (const char* key = std::getenv("LLAVA_PIPE_API_KEY")) s.api_key = key;
  }
  return s;
}

ServerSection load_server_section(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot read the config file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_server_section(text.str(), path);
}

std::string describe(const ServerSection& s) {
  std::ostringstream out;
  out << "server (llava-pipe serve --http):\n"
      << "  max_body_bytes      " << format_bytes(s.max_body_bytes) << "\n"
      << "  max_images          " << s.max_images << " per request\n"
      << "  max_image_bytes     " << format_bytes(s.max_image_bytes) << "\n"
      << "  max_image_pixels    " << s.max_image_pixels << "\n"
      << "  request_timeout     " << format_millis(s.request_timeout_ms) << "\n"
      << "  max_connections     " << s.max_connections << "\n"
      << "  keep_alive          "
      << (s.keep_alive_ms == 0 ? std::string("off (one request a connection)")
                               : format_millis(s.keep_alive_ms))
      << "\n"
      << "  receive_timeout     " << format_millis(s.receive_timeout_ms) << " a request\n"
      << "  api_key             " << (s.api_key.empty() ? "none (anyone may call)" : "set") << "\n"
      << "  remote images       "
      << (s.allow_remote_images
              ? "http(s) allowed, " + format_millis(s.remote_image_timeout_ms) + " timeout, " +
                    (s.allow_private_image_addresses ? "private addresses too"
                                                     : "public addresses only")
              : std::string("off"))
      << "\n"
      << "  file:// images      "
      << (s.image_root.empty() ? std::string("off") : "under " + s.image_root) << "\n";
  return out.str();
}

void parse_host_port(const std::string& text, std::string& host, int& port,
                     const std::string& flag) {
  const size_t colon = text.rfind(':');
  const std::string usage = flag + " " + text + ": expected HOST:PORT (e.g. 127.0.0.1:8000)";
  if (colon == std::string::npos || colon == 0) throw ConfigError(usage);
  host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const std::string digits = text.substr(colon + 1);
  if (digits.empty() || digits.size() > 5 ||
      digits.find_first_not_of("0123456789") != std::string::npos || std::stoi(digits) > 65535) {
    throw ConfigError(usage);
  }
  port = std::stoi(digits);
}

}  // namespace llava
