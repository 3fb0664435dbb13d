#include "stages/vision/image.h"

#include <gtest/gtest.h>

#include "common/errors.h"
#include "reference.h"

namespace {

using llava::decode_image;
using llava::RequestError;
using llava::test::data_path;
using llava::test::read_file;

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    decode_image(bytes.data(), bytes.size());
  } catch (const RequestError& e) {
    return e.what();
  }
  return "";
}

TEST(Image, DecodesEveryTestImageToRgbOfItsSize) {
  auto info = llava::test::load_json("images/preprocess.json");
  ASSERT_EQ(info["images"].size(), 20u);
  for (const auto& image : info["images"]) {
    auto bytes = read_file(data_path("images/" + image["file"].get<std::string>()));
    auto decoded = decode_image(bytes.data(), bytes.size());
    EXPECT_EQ(decoded.width, image["size"][0].get<int>()) << image["file"];
    EXPECT_EQ(decoded.height, image["size"][1].get<int>()) << image["file"];
    EXPECT_EQ(decoded.pixels.size(), static_cast<size_t>(decoded.width) * decoded.height * 3);
  }
}

TEST(Image, EmptyFileIsRefused) {
  EXPECT_EQ(error_of({}), "image: the file is empty (0 bytes)");
}

TEST(Image, TruncatedJpegIsRefused) {
  auto bytes = read_file(data_path("images/img01_320x240_RGB.jpg"));
  bytes.resize(bytes.size() / 3);
  // libjpeg decodes what it can of a truncated JPEG (PIL too); a cut inside the headers fails.
  std::vector<uint8_t> headers(bytes.begin(), bytes.begin() + 100);
  EXPECT_NE(error_of(headers), "");
}

TEST(Image, TruncatedPngIsRefused) {
  auto bytes = read_file(data_path("images/img00_64x48_RGB.png"));
  bytes.resize(bytes.size() / 2);
  EXPECT_NE(error_of(bytes).find("image: decoding failed"), std::string::npos) << error_of(bytes);
}

// Found by tests/fuzz: a JPEG whose Huffman table declares more than 256 codes made
// stb_image 2.27 write past its tables. JPEGs are now decoded by libjpeg-turbo.
TEST(Image, JpegWithAnOversizedHuffmanTableIsRefused) {
  auto bytes = read_file(data_path("images/img04_224x224_RGB.jpg"));
  size_t dht = 2;
  while (!(bytes[dht] == 0xFF && bytes[dht + 1] == 0xC4)) dht += 2 + (bytes[dht + 2] << 8 | bytes[dht + 3]);
  for (int i = 1; i <= 16; ++i) bytes[dht + 4 + i] = 0x20;  // 16 x 32 = 512 codes
  EXPECT_EQ(error_of(bytes), "image: corrupt JPEG (Bogus Huffman table definition)");
}

TEST(Image, NonImageBytesAreRefused) {
  std::string text = "this is not an image, just some text";
  EXPECT_NE(error_of(std::vector<uint8_t>(text.begin(), text.end())).find("not a readable image"),
            std::string::npos);
}

void append_be32(std::vector<uint8_t>& out, uint32_t value) {
  for (int shift : {24, 16, 8, 0}) out.push_back(static_cast<uint8_t>(value >> shift));
}

// Appends a chunk: length, type, data and a zero CRC (stb_image does not check CRCs).
void append_chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& data,
                  uint32_t claimed_length) {
  append_be32(png, claimed_length);
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data.begin(), data.end());
  png.insert(png.end(), 4, 0);
}

// A PNG signature and an IHDR chunk claiming width x height RGB, and no pixel data.
std::vector<uint8_t> png_header(uint32_t width, uint32_t height) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  std::vector<uint8_t> ihdr;
  append_be32(ihdr, width);
  append_be32(ihdr, height);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, no interlace
  append_chunk(png, "IHDR", ihdr, 13);
  return png;
}

TEST(Image, DecompressionBombIsRefusedFromItsHeader) {
  EXPECT_EQ(error_of(png_header(65500, 65500)),
            "image: 65500x65500 pixels is over the limit of 40000000");
  EXPECT_EQ(error_of(png_header(10000, 10000)),
            "image: 10000x10000 pixels is over the limit of 40000000");
  // Found by tests/fuzz: the product of two 32-bit sides must not overflow.
  EXPECT_EQ(error_of(png_header(3267297207u, 2867324061u)),
            "image: 3267297207x2867324061 pixels is over the limit of 40000000");
}

// A zlib stream of `runs` x 258 + 1 zero bytes in a few bytes each: one fixed-Huffman
// block of a literal 0 and then back-references of length 258 at distance 1.
std::vector<uint8_t> zlib_zeros(size_t runs) {
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

// A 16x16 PNG needs 784 bytes of rows; this one's IDAT inflates to 16 MiB of zeros from 27 KB
// (decoding used to succeed, after allocating all of it).
TEST(Image, CompressedDataThatExpandsPastItsPixelsIsRefused) {
  auto png = png_header(16, 16);
  const auto stream = zlib_zeros(65'000);
  append_chunk(png, "IDAT", stream, static_cast<uint32_t>(stream.size()));
  append_chunk(png, "IEND", {}, 0);
  const std::string error = error_of(png);
  EXPECT_NE(error.find("image: decoding this 16x16 file asked for"), std::string::npos) << error;

  // The same file with its rows' worth of zeros decodes: the ceiling is not in the way.
  auto small = png_header(16, 16);
  const auto enough = zlib_zeros(4);  // 1,033 bytes: the rows and a little more
  append_chunk(small, "IDAT", enough, static_cast<uint32_t>(enough.size()));
  append_chunk(small, "IEND", {}, 0);
  auto decoded = decode_image(small.data(), small.size());
  EXPECT_EQ(decoded.width, 16);
  EXPECT_EQ(decoded.pixels, std::vector<uint8_t>(16 * 16 * 3, 0));
}

// Found by tests/fuzz: an IDAT chunk claiming ~1 GiB made stb_image allocate that much (2 GiB
// once doubled) before finding the data missing.
TEST(Image, ChunkClaimingMoreBytesThanTheFileIsRefusedBeforeAllocating) {
  auto png = png_header(16, 16);
  append_chunk(png, "IDAT", zlib_zeros(4), 1'100'000'000u);
  const std::string error = error_of(png);
  EXPECT_NE(error.find("image: decoding this 16x16 file asked for 1100000000 bytes"),
            std::string::npos)
      << error;
}

}  // namespace
