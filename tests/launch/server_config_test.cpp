// The YAML file's `server:` section: every key read, the defaults, and errors that name the
// file, line, column and key.
#include "launch/server_config.h"

#include <gtest/gtest.h>

#include "common/errors.h"

namespace llava {
namespace {

std::string error_of(const std::string& yaml) {
  try {
    parse_server_section(yaml, "pipe.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ServerConfig, EveryKeyIsReadAndCheckPrintsIt) {
  const ServerSection s = parse_server_section(
      "model: {checkpoint: x}\n"
      "server:\n"
      "  max_body_bytes: 2MiB\n"
      "  max_images: 3\n"
      "  max_image_bytes: 1MiB\n"
      "  max_image_pixels: 1000000\n"
      "  request_timeout: 90s\n"
      "  max_connections: 12\n"
      "  keep_alive: 2s\n"
      "  receive_timeout: 90s\n"
      "  api_key: secret\n"
      "  allow_remote_images: true\n"
      "  remote_image_timeout: 2s\n"
      "  allow_private_image_addresses: true\n",
      "pipe.yaml");
  EXPECT_EQ(s.max_body_bytes, 2u << 20);
  EXPECT_EQ(s.max_images, 3);
  EXPECT_EQ(s.max_image_bytes, 1u << 20);
  EXPECT_EQ(s.max_image_pixels, 1000000u);
  EXPECT_EQ(s.request_timeout_ms, 90000u);
  EXPECT_EQ(s.max_connections, 12);
  EXPECT_EQ(s.keep_alive_ms, 2000u);
  EXPECT_NE(describe(s).find("keep_alive          2 s"), std::string::npos) << describe(s);
  EXPECT_EQ(s.receive_timeout_ms, 90000u);
  EXPECT_NE(describe(s).find("receive_timeout     90 s a request"), std::string::npos)
      << describe(s);
  EXPECT_EQ(s.api_key, "secret");
  EXPECT_TRUE(s.allow_remote_images);
  EXPECT_EQ(s.remote_image_timeout_ms, 2000u);
  EXPECT_TRUE(s.allow_private_image_addresses);
  EXPECT_NE(describe(s).find("http(s) allowed, 2 s timeout, private addresses too"),
            std::string::npos)
      << describe(s);
}

// Remote images are off; turned on, they come from public addresses only.
TEST(ServerConfig, RemoteImagesAreOffAndThenPublicOnlyByDefault) {
  const ServerSection off = parse_server_section("model: {checkpoint: x}\n", "pipe.yaml");
  EXPECT_FALSE(off.allow_remote_images);
  EXPECT_FALSE(off.allow_private_image_addresses);
  EXPECT_NE(describe(off).find("remote images       off"), std::string::npos) << describe(off);
  EXPECT_EQ(off.keep_alive_ms, 0u);  // one request a connection: none waits, idle, on a thread
  EXPECT_EQ(off.receive_timeout_ms, 60000u);
  EXPECT_NE(describe(off).find("keep_alive          off (one request a connection)"),
            std::string::npos)
      << describe(off);
  const ServerSection on =
      parse_server_section("server: {allow_remote_images: true}\n", "pipe.yaml");
  EXPECT_TRUE(on.allow_remote_images);
  EXPECT_FALSE(on.allow_private_image_addresses);
  EXPECT_NE(describe(on).find("public addresses only"), std::string::npos) << describe(on);
}

TEST(ServerConfig, ABadValueOrAnUnknownKeyNamesFileLineAndKey) {
  EXPECT_EQ(
      error_of("server:\n  allow_private_image_addresses: yes please\n"),
      "pipe.yaml:2:34: server.allow_private_image_addresses: 'yes please' is not true or false");
  EXPECT_EQ(error_of("server:\n  max_images: 17\n"),
            "pipe.yaml:2:15: server.max_images: '17' is not a whole number in [0, 16]");
  EXPECT_EQ(error_of("server:\n  keep_alive: 500ms\n"),
            "pipe.yaml:2:15: server.keep_alive: '500ms' is not a whole number of seconds (e.g. "
            "0s, 2s)");
  EXPECT_EQ(error_of("server:\n  request_timeout: 0s\n"),
            "pipe.yaml:2:20: server.request_timeout: '0s' is not a duration (e.g. 10s)");
  EXPECT_EQ(error_of("server:\n  receive_timeout: 0s\n"),
            "pipe.yaml:2:20: server.receive_timeout: '0s' is not a duration (e.g. 10s)");
  const std::string unknown = error_of("server:\n  max_imagez: 3\n");
  EXPECT_EQ(unknown.rfind("pipe.yaml:2:3: server.max_imagez: unknown key (known here: ", 0), 0u)
      << unknown;
}

}  // namespace
}  // namespace llava
