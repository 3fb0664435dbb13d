// Image decoding behind header checks: libjpeg-turbo for JPEG, stb_image for the rest.
#include "stages/vision/image.h"

// jpeglib.h needs FILE declared first.
#include <cstdio>
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
// stb_image compiled here with only the formats LLaVA needs besides JPEG: Debian's prebuilt
// libstb carries stb 2.27's JPEG decoder, which writes out of bounds on crafted Huffman
// tables (found by tests/fuzz), and more parsers than a server wants to expose.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_NO_STDIO
#include <cstddef>
namespace llava {
namespace {
void* bounded_malloc(std::size_t size);
void* bounded_realloc(void* block, std::size_t size);
}  // namespace
}  // namespace llava
#define STBI_MALLOC(size) llava::bounded_malloc(size)
#define STBI_REALLOC(block, size) llava::bounded_realloc(block, size)
#define STBI_FREE(block) std::free(block)
#include <stb/stb_image.h>

#include <csetjmp>
#include <cstdlib>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "common/errors.h"

namespace llava {

namespace {

// Every allocation stb_image makes goes through these. A PNG's chunk lengths and its zlib
// stream are not bounded by its header (stb grows buffers to whatever a chunk claims, and
// keeps inflating past the pixels the header needs), so each decode sets a ceiling from the
// file's size and its checked width x height, and a larger request fails the decode.
thread_local size_t allocation_ceiling = SIZE_MAX;
thread_local size_t refused_allocation = 0;

bool within_ceiling(size_t size) {
  if (size <= allocation_ceiling) return true;
  refused_allocation = size;
  return false;
}

void* bounded_malloc(size_t size) {
  return within_ceiling(size) ? std::malloc(size) : nullptr;
}

void* bounded_realloc(void* block, size_t size) {
  return within_ceiling(size) ? std::realloc(block, size) : nullptr;
}

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured Exif block, 1 when absent or
// unreadable. Every offset is checked against the block: the bytes come from strangers.
int exif_orientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](size_t at) {
    return little ? uint32_t{tiff[at]} | (uint32_t{tiff[at + 1]} << 8)
                  : (uint32_t{tiff[at]} << 8) | uint32_t{tiff[at + 1]};
  };
  auto u32 = [&](size_t at) {
    return little ? u16(at) | (u16(at + 2) << 16) : (u16(at) << 16) | u16(at + 2);
  };
  if (u16(2) != 42) return 1;
  const uint64_t ifd = u32(4);
  if (ifd + 2 > size) return 1;
  const uint32_t entries = u16(ifd);
  for (uint32_t i = 0; i < entries; ++i) {
    const uint64_t at = ifd + 2 + 12ull * i;
    if (at + 12 > size) return 1;
    if (u16(at) != 0x0112) continue;
    const uint32_t type = u16(at + 2), count = u32(at + 4);
    if (count < 1) return 1;
    const uint32_t value = type == 3 ? u16(at + 8) : type == 4 ? u32(at + 8) : 1;  // SHORT, LONG
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

// A PNG's eXIf chunk (PIL reads it as it reads a JPEG's APP1 block).
int png_exif_orientation(const uint8_t* data, size_t size) {
  size_t at = 8;
  while (at + 12 <= size) {
    const uint64_t length = (uint64_t{data[at]} << 24) | (uint64_t{data[at + 1]} << 16) |
                            (uint64_t{data[at + 2]} << 8) | data[at + 3];
    if (at + 12 + length > size) return 1;
    if (std::equal(data + at + 4, data + at + 8, "eXIf")) return exif_orientation(data + at + 8, length);
    if (std::equal(data + at + 4, data + at + 8, "IEND")) return 1;
    at += 12 + length;
  }
  return 1;
}

}  // namespace

// The pixels as a viewer shows them: what PIL's ImageOps.exif_transpose (and so
// transformers' load_image) does for each Exif orientation.
RgbImage apply_orientation(RgbImage image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const int w = image.width, h = image.height;
  const bool swaps = orientation >= 5;  // 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90
  RgbImage out;
  out.width = swaps ? h : w;
  out.height = swaps ? w : h;
  out.pixels.resize(image.pixels.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int row = y, col = x;  // the source pixel of (y, x)
      switch (orientation) {
        case 2: col = w - 1 - x; break;                        // FLIP_LEFT_RIGHT
        case 3: row = h - 1 - y, col = w - 1 - x; break;       // ROTATE_180
        case 4: row = h - 1 - y; break;                        // FLIP_TOP_BOTTOM
        case 5: row = x, col = y; break;                       // TRANSPOSE
        case 6: row = h - 1 - x, col = y; break;               // ROTATE_270 (90 clockwise)
        case 7: row = h - 1 - x, col = w - 1 - y; break;       // TRANSVERSE
        case 8: row = x, col = w - 1 - y; break;               // ROTATE_90 (counter-clockwise)
      }
      const uint8_t* from = &image.pixels[(static_cast<size_t>(row) * w + col) * 3];
      uint8_t* to = &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3];
      to[0] = from[0], to[1] = from[1], to[2] = from[2];
    }
  }
  return out;
}

namespace {

// libjpeg reports errors through a callback that must not return: jump back out, with no
// C++ object alive between setjmp and longjmp.
struct JpegError {
  jpeg_error_mgr manager;
  jmp_buf back;
  char message[JMSG_LENGTH_MAX];
  bool truncated;  // the data ended before the image did (libjpeg fills the rest with grey)
};

void on_jpeg_error(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  longjmp(error->back, 1);
}

// Warnings (corrupt data it recovers from) pass, as in PIL, except a file that ends early:
// PIL refuses it ("image file is truncated"), and so do we.
void on_jpeg_warning(j_common_ptr info, int level) {
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(info->err)->truncated = true;
}

// Decodes to RGB (grayscale expanded; CMYK converted as PIL does). Returns a malloc'ed
// buffer, or nullptr with `error` set. `too_big` is set when the header exceeds the limit.
uint8_t* decode_jpeg_raw(const uint8_t* data, size_t size, int64_t max_pixels, int* width,
                         int* height, int* orientation, bool* too_big, char* error) {
  jpeg_decompress_struct info;
  JpegError failure;
  uint8_t* volatile pixels = nullptr;
  uint8_t* volatile row = nullptr;
  info.err = jpeg_std_error(&failure.manager);
  failure.manager.error_exit = on_jpeg_error;
  failure.manager.emit_message = on_jpeg_warning;
  failure.truncated = false;
  if (setjmp(failure.back)) {
    std::snprintf(error, JMSG_LENGTH_MAX, "%s", failure.message);
    jpeg_destroy_decompress(&info);
    std::free(pixels);
    std::free(row);
    return nullptr;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&info, JPEG_APP0 + 1, 0xFFFF);  // APP1: Exif, for the orientation
  jpeg_read_header(&info, TRUE);
  for (jpeg_saved_marker_ptr m = info.marker_list; m != nullptr; m = m->next) {
    static const uint8_t kExif[] = {'E', 'x', 'i', 'f', 0, 0};
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::equal(kExif, kExif + 6, m->data)) {
      *orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;  // PIL reads the first Exif block
    }
  }
  *width = static_cast<int>(info.image_width);
  *height = static_cast<int>(info.image_height);
  if (static_cast<uint64_t>(info.image_width) * info.image_height > static_cast<uint64_t>(max_pixels)) {
    *too_big = true;
    jpeg_destroy_decompress(&info);
    return nullptr;
  }
  const bool cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
  info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&info);
  const size_t w = info.output_width, channels = info.output_components;
  pixels = static_cast<uint8_t*>(std::malloc(w * info.output_height * 3));
  if (!cmyk) {  // RGB rows straight into the image, several a call
    while (info.output_scanline < info.output_height) {
      JSAMPROW rows[4];
      const JDIMENSION first = info.output_scanline;
      for (JDIMENSION r = 0; r < 4; ++r) {
        rows[r] = pixels + static_cast<size_t>(std::min(first + r, info.output_height - 1)) * w * 3;
      }
      const JDIMENSION lines = std::min<JDIMENSION>(4, info.output_height - first);
      if (jpeg_read_scanlines(&info, rows, lines) == 0) break;
    }
  } else {
    row = static_cast<uint8_t*>(std::malloc(w * channels));
    // Adobe files store CMYK inverted; then (255 - C)(255 - K) / 255, as PIL converts.
    const bool inverted = info.saw_Adobe_marker;
    while (info.output_scanline < info.output_height) {
      uint8_t* out = pixels + static_cast<size_t>(info.output_scanline) * w * 3;
      JSAMPROW rows[1] = {row};
      if (jpeg_read_scanlines(&info, rows, 1) == 0) break;
      for (size_t x = 0; x < w; ++x) {
        const int k = inverted ? row[4 * x + 3] : 255 - row[4 * x + 3];
        for (int c = 0; c < 3; ++c) {
          const int v = inverted ? row[4 * x + c] : 255 - row[4 * x + c];
          out[3 * x + c] = static_cast<uint8_t>((v * k + 127) / 255);
        }
      }
    }
  }
  const bool truncated = failure.truncated;  // before finish, which reads no more data
  if (!truncated) jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  std::free(row);
  if (truncated) {
    std::snprintf(error, JMSG_LENGTH_MAX, "the file is truncated: its data ends before the image does");
    std::free(pixels);
    return nullptr;
  }
  return pixels;
}

RgbImage decode_jpeg(const uint8_t* data, size_t size, const ImageLimits& limits) {
  int width = 0, height = 0;
  bool too_big = false;
  int orientation = 1;
  char error[JMSG_LENGTH_MAX] = {0};
  uint8_t* pixels =
      decode_jpeg_raw(data, size, limits.max_pixels, &width, &height, &orientation, &too_big, error);
  if (too_big) {
    throw RequestError("image: " + std::to_string(width) + "x" + std::to_string(height) +
                       " pixels is over the limit of " + std::to_string(limits.max_pixels));
  }
  if (!pixels) throw RequestError(std::string("image: corrupt JPEG (") + error + ")");
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(pixels, pixels + static_cast<size_t>(width) * height * 3);
  std::free(pixels);
  return apply_orientation(std::move(image), orientation);
}

}  // namespace

RgbImage decode_image(const uint8_t* data, size_t size, const ImageLimits& limits) {
  if (size == 0) throw RequestError("image: the file is empty (0 bytes)");
  if (size > static_cast<size_t>(INT32_MAX)) throw RequestError("image: file over 2 GiB");
  const int length = static_cast<int>(size);
  int width = 0, height = 0, channels = 0;
  // stb_image refuses very large PNGs with a vague message; read their size ourselves so
  // that a decompression bomb is named for what it is.
  static const uint8_t kPng[] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  const bool is_png = size >= 24 && std::equal(kPng, kPng + 8, data);
  if (is_png && std::equal(data + 12, data + 16, "IHDR")) {
    auto be32 = [&](size_t at) {
      return (uint32_t{data[at]} << 24) | (uint32_t{data[at + 1]} << 16) |
             (uint32_t{data[at + 2]} << 8) | data[at + 3];
    };
    const uint64_t w = be32(16), h = be32(20);  // each < 2^32: the product fits 64 bits
    if (w * h > static_cast<uint64_t>(limits.max_pixels)) {
      throw RequestError("image: " + std::to_string(w) + "x" + std::to_string(h) +
                         " pixels is over the limit of " + std::to_string(limits.max_pixels));
    }
  }
  // JPEG: libjpeg-turbo, the decoder PIL uses (so pixels match it exactly), fuzzed
  // continuously upstream. Everything else: stb_image (built without a JPEG decoder).
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    return decode_jpeg(data, size, limits);
  }
  const int orientation = is_png ? png_exif_orientation(data, size) : 1;
  if (!stbi_info_from_memory(data, length, &width, &height, &channels)) {
    throw RequestError(std::string("image: not a readable image (") + stbi_failure_reason() +
                       "; JPEG, PNG, BMP and GIF are read)");
  }
  if (width <= 0 || height <= 0 ||
      static_cast<int64_t>(width) * height > limits.max_pixels) {
    throw RequestError("image: " + std::to_string(width) + "x" + std::to_string(height) +
                       " pixels is over the limit of " + std::to_string(limits.max_pixels));
  }
  // Room for 16-bit RGBA pixels plus a row filter byte each (8 bytes a pixel), twice the file
  // (its compressed data, gathered in doubling steps), and 1 MiB for tables.
  const size_t pixel_count = static_cast<size_t>(width) * height;
  allocation_ceiling = 8 * pixel_count + static_cast<size_t>(height) + 2 * size + (1u << 20);
  refused_allocation = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(data, length, &width, &height, &channels, 3), stbi_image_free);
  allocation_ceiling = SIZE_MAX;
  if (!pixels && refused_allocation != 0) {
    throw RequestError("image: decoding this " + std::to_string(width) + "x" +
                       std::to_string(height) + " file asked for " +
                       std::to_string(refused_allocation) +
                       " bytes, more than its size and pixels can need (corrupt chunk "
                       "lengths, or compressed data that expands past its pixels)");
  }
  if (!pixels) {
    throw RequestError(std::string("image: decoding failed (") + stbi_failure_reason() +
                       "; truncated or corrupt file?)");
  }
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(pixels.get(), pixels.get() + static_cast<size_t>(width) * height * 3);
  return apply_orientation(std::move(image), orientation);
}

}  // namespace llava
