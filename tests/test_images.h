// Hand-made PNG files for the image tests: a header, chunks, and zlib streams of zeros.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llava::test {

inline void append_be32(std::vector<uint8_t>& out, uint32_t value) {
  for (int shift : {24, 16, 8, 0}) out.push_back(static_cast<uint8_t>(value >> shift));
}

// Appends a chunk: length, type, data and a zero CRC (stb_image does not check CRCs).
inline void append_chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& data,
                  uint32_t claimed_length) {
  append_be32(png, claimed_length);
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data.begin(), data.end());
  png.insert(png.end(), 4, 0);
}

// A PNG signature and an IHDR chunk claiming width x height RGB, and no pixel data.
inline std::vector<uint8_t> png_header(uint32_t width, uint32_t height) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  std::vector<uint8_t> ihdr;
  append_be32(ihdr, width);
  append_be32(ihdr, height);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, no interlace
  append_chunk(png, "IHDR", ihdr, 13);
  return png;
}

// A zlib stream of `runs` x 258 + 1 zero bytes in a few bytes each: one fixed-Huffman
// block of a literal 0 and then back-references of length 258 at distance 1.
inline std::vector<uint8_t> zlib_zeros(size_t runs) {
  std::vector<uint8_t> out = {0x78, 0x01};
  uint32_t bits = 0;
  int count = 0;
  auto put = [&](uint32_t value, int width) {  // LSB first, as deflate packs fields
    for (int i = 0; i < width; ++i) {
      bits |= ((value >> i) & 1u) << count;
      if (++count == 8) out.push_back(static_cast<uint8_t>(bits)), bits = 0, count = 0;
    }
  };
  auto put_code = [&](uint32_t code, int width) {  // Huffman codes go most significant first
    for (int i = width - 1; i >= 0; --i) put((code >> i) & 1u, 1);
  };
  put(1, 1);          // last block
  put(1, 2);          // fixed Huffman codes
  put_code(0x30, 8);  // literal 0
  for (size_t i = 0; i < runs; ++i) {
    put_code(0xC5, 8);  // length 258 (symbol 285)
    put_code(0, 5);     // distance 1
  }
  put_code(0, 7);  // end of block
  if (count > 0) out.push_back(static_cast<uint8_t>(bits));
  const uint32_t total = static_cast<uint32_t>(runs * 258 + 1);
  append_be32(out, ((total % 65521) << 16) | 1);  // Adler-32 of zeros
  return out;
}

// A whole black width x height RGB PNG (its rows as zeros, plus at most 257 bytes more,
// which decoders ignore).
inline std::vector<uint8_t> black_png(uint32_t width, uint32_t height) {
  auto png = png_header(width, height);
  const size_t rows = static_cast<size_t>(height) * (1 + 3 * static_cast<size_t>(width));
  const auto stream = zlib_zeros(rows / 258 + 1);
  append_chunk(png, "IDAT", stream, static_cast<uint32_t>(stream.size()));
  append_chunk(png, "IEND", {}, 0);
  return png;
}

}  // namespace llava::test
