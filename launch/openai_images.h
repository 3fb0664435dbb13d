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

// Strict base64 (RFC 4648, padding optional); throws ApiError 400 naming `param`.
std::string decode_base64(const std::string& text, const std::string& param);

// "" when the bytes start like a JPEG, PNG, GIF or BMP file (what the vision stage decodes),
// else why not.
std::string image_format_problem(const std::string& bytes);

// Width and height from the file's header (no decoding); {0, 0} when the header does not say.
std::pair<uint64_t, uint64_t> image_size(const std::string& bytes);

}  // namespace llava
