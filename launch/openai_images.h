// An image part's URL as the image file's bytes: a data: URI (base64), a file:// path under
// the config's image_root, or an http(s):// URL fetched with libcurl (when the config allows
// it, with a timeout and a byte cap). Every refusal is an ApiError 400 naming the part.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "launch/server_config.h"

namespace llava {

// The bytes of the image at `url`; `param` names the part in errors ("messages[0].content[1]").
std::string fetch_image(const std::string& url, const std::string& param,
                        const ServerSection& server);

// Whether a numeric IPv4 or IPv6 address is one a remote image may not come from unless
// server.allow_private_image_addresses: loopback, private (RFC 1918, IPv6 unique local),
// shared (100.64/10), link-local (169.254/16: cloud metadata; fe80::/10), multicast,
// unspecified, reserved and benchmarking ranges, and IPv4 inside IPv6 (mapped, NAT64) of
// those. Text that is no address counts as private.
bool is_private_address(const std::string& address);

// Strict base64 (RFC 4648, padding optional); throws ApiError 400 naming `param`.
std::string decode_base64(const std::string& text, const std::string& param);

// "" when the bytes start like a JPEG, PNG, GIF or BMP file (what the vision stage decodes),
// else why not.
std::string image_format_problem(const std::string& bytes);

// Width and height from the file's header (no decoding); {0, 0} when the header does not say.
std::pair<uint64_t, uint64_t> image_size(const std::string& bytes);

}  // namespace llava
