// The YAML file's `server:` section: the HTTP server's limits and who may use it. Read here
// (not in common/config.cpp) until it joins PipelineConfig; errors are "file:line:col: ...".
#pragma once

#include <cstdint>
#include <string>

namespace llava {

struct ServerSection {
  uint64_t max_body_bytes = 64ull << 20;    // a request body past it: 413
  int max_images = 8;                       // images in one request (the coordinator's cap: 16)
  uint64_t max_image_bytes = 20ull << 20;   // one image's encoded bytes (data URI, file, URL)
  uint64_t max_image_pixels = 64ull << 20;  // width x height, read from the file's header
  uint64_t request_timeout_ms = 600000;     // a request not answered by then is cancelled
  int max_connections = 64;                 // connections handled at once; more wait
  // How long a connection may wait for its next request (whole seconds; 0 = one request a
  // connection). A waiting connection holds one of max_connections' threads: 64 clients'
  // idle pooled connections made a new client wait the whole 5 s of httplib's default.
  uint64_t keep_alive_ms = 0;
  // A request's line, headers and body must arrive within this of its first byte; a
  // slower client gets 408 and its connection is closed.
  // httplib times each read (30 s) but not a request: clients sending a byte every few
  // seconds held max_connections' threads for as long as they liked.
  uint64_t receive_timeout_ms = 60000;
  // Bearer key for every endpoint but /health and /metrics; "" = none. The environment's
  // LLAVA_PIPE_API_KEY is used when the file sets none.
  std::string api_key;
  // http(s):// image URLs: fetched with a timeout and the image byte cap, off by default.
  bool allow_remote_images = false;
  uint64_t remote_image_timeout_ms = 10000;
  // Whether they may reach loopback, private, link-local (cloud metadata) and other
  // non-public addresses (is_private_address): off, so that a client cannot make the
  // server fetch from its own network. Through a proxy (the environment's http_proxy,
  // https_proxy, all_proxy), the proxy's address is allowed and each URL's host (redirects
  // included) is resolved and checked before the proxy is asked (openai_images.cpp).
  bool allow_private_image_addresses = false;
  // file:// image URLs: only under this folder (resolved against the config's folder);
  // "" = refused.
  std::string image_root;
};

// The `server:` section of the YAML file at `path` (defaults when absent); throws
// ConfigError naming file, line and key. The API key falls back to LLAVA_PIPE_API_KEY.
ServerSection load_server_section(const std::string& path);
ServerSection parse_server_section(const std::string& yaml_text,
                                   const std::string& path_for_errors);

// The section as `check` prints it: one line a limit.
std::string describe(const ServerSection& server);

// "host:port" -> host and port; throws ConfigError naming the value.
void parse_host_port(const std::string& text, std::string& host, int& port,
                     const std::string& flag = "--http");

}  // namespace llava
