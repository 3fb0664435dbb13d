// Decoding image files (JPEG with libjpeg-turbo; PNG, BMP, GIF first frame, ... with
// stb_image) to 8-bit RGB, with a pixel limit checked from the header before any pixel is
// allocated, turned upright by the file's Exif orientation (JPEG APP1, PNG eXIf) as
// transformers' load_image does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llava {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3]
  uint8_t at(int y, int x, int c) const {
    return pixels[(static_cast<size_t>(y) * width + x) * 3 + c];
  }
};

struct ImageLimits {
  int64_t max_pixels = 40'000'000;  // a 65500 x 65500 "bomb" header is refused before decoding
};

// The pixels turned as an Exif Orientation tag (1-8) says, as PIL's ImageOps.exif_transpose
// does; other values leave them as they are.
RgbImage apply_orientation(RgbImage image, int orientation);

// Grayscale is replicated to RGB, alpha is dropped (as PIL's convert("RGB") does).
// Throws RequestError saying what is wrong with the bytes.
RgbImage decode_image(const uint8_t* data, size_t size, const ImageLimits& limits = {});

}  // namespace llava
