// stb_image decoding behind a header check.
#include "stages/vision/image.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <memory>
#include <string>

#include "common/errors.h"

namespace llava {

RgbImage decode_image(const uint8_t* data, size_t size, const ImageLimits& limits) {
  if (size == 0) throw RequestError("image: the file is empty (0 bytes)");
  if (size > static_cast<size_t>(INT32_MAX)) throw RequestError("image: file over 2 GiB");
  const int length = static_cast<int>(size);
  int width = 0, height = 0, channels = 0;
  // stb_image refuses very large PNGs with a vague message; read their size ourselves so
  // that a decompression bomb is named for what it is.
  static const uint8_t kPng[] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (size >= 24 && std::equal(kPng, kPng + 8, data) && std::equal(data + 12, data + 16, "IHDR")) {
    auto be32 = [&](size_t at) {
      return (uint32_t{data[at]} << 24) | (uint32_t{data[at + 1]} << 16) |
             (uint32_t{data[at + 2]} << 8) | data[at + 3];
    };
    const int64_t w = be32(16), h = be32(20);
    if (w * h > limits.max_pixels) {
      throw RequestError("image: " + std::to_string(w) + "x" + std::to_string(h) +
                         " pixels is over the limit of " + std::to_string(limits.max_pixels));
    }
  }
  if (!stbi_info_from_memory(data, length, &width, &height, &channels)) {
    throw RequestError(std::string("image: not a readable image (") + stbi_failure_reason() +
                       "; JPEG, PNG, BMP, GIF, TGA, PSD, PNM and HDR are read)");
  }
  if (width <= 0 || height <= 0 ||
      static_cast<int64_t>(width) * height > limits.max_pixels) {
    throw RequestError("image: " + std::to_string(width) + "x" + std::to_string(height) +
                       " pixels is over the limit of " + std::to_string(limits.max_pixels));
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(data, length, &width, &height, &channels, 3), stbi_image_free);
  if (!pixels) {
    throw RequestError(std::string("image: decoding failed (") + stbi_failure_reason() +
                       "; truncated or corrupt file?)");
  }
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(pixels.get(), pixels.get() + static_cast<size_t>(width) * height * 3);
  return image;
}

}  // namespace llava
