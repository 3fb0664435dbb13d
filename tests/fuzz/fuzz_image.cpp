// libFuzzer target: image decoding (our checks, stb_image, which image.cpp compiles in,
// and our use of libjpeg-turbo).
#include <cstdint>

#include "common/errors.h"
#include "stages/vision/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  llava::ImageLimits limits;
  limits.max_pixels = 1'000'000;  // keeps each input fast; the check itself is what matters
  try {
    llava::RgbImage image = llava::decode_image(data, size, limits);
    if (image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) __builtin_trap();
  } catch (const llava::RequestError&) {
  }
  return 0;
}
