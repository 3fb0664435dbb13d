#include "stages/vision/image.h"

#include <gtest/gtest.h>
#include <jpeglib.h>

#include <array>
#include <cstdio>
#include <cstdlib>

#include "common/errors.h"
#include "tests/stages/reference.h"
#include "tests/test_images.h"

namespace {

using llava::decode_image;
using llava::RequestError;
using llava::test::append_chunk;
using llava::test::data_path;
using llava::test::png_header;
using llava::test::zlib_zeros;
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

TEST(Image, DecompressionBombIsRefusedFromItsHeader) {
  EXPECT_EQ(error_of(png_header(65500, 65500)),
            "image: 65500x65500 pixels is over the limit of 40000000");
  EXPECT_EQ(error_of(png_header(10000, 10000)),
            "image: 10000x10000 pixels is over the limit of 40000000");
  // Found by tests/fuzz: the product of two 32-bit sides must not overflow.
  EXPECT_EQ(error_of(png_header(3267297207u, 2867324061u)),
            "image: 3267297207x2867324061 pixels is over the limit of 40000000");
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

// PIL refuses a JPEG whose data ends early ("image file is truncated"); libjpeg fills the
// rest with grey and only warns.
TEST(Image, TruncatedJpegIsRefusedAsPilRefusesIt) {
  const auto whole = read_file(data_path("images/img01_320x240_RGB.jpg"));
  EXPECT_NO_THROW(decode_image(whole.data(), whole.size()));
  const std::vector<uint8_t> half(whole.begin(), whole.begin() + static_cast<long>(whole.size() / 2));
  const std::string error = error_of(half);
  EXPECT_NE(error.find("truncated"), std::string::npos) << error;
}

// Each Exif orientation turns the pixels as PIL's ImageOps.exif_transpose does; a 3 x 2
// image whose values name their place, against the layouts worked out by hand from PIL's
// Transpose methods (FLIP_LEFT_RIGHT, ROTATE_180, ..., ROTATE_90).
TEST(Image, EachExifOrientationTurnsThePixelsAsPilDoes) {
  llava::RgbImage image;
  image.width = 3;
  image.height = 2;
  for (int v : {0, 1, 2, 10, 11, 12}) image.pixels.insert(image.pixels.end(), {uint8_t(v), 0, 0});
  const std::vector<std::vector<int>> expected = {
      {0, 1, 2, 10, 11, 12},  // 1: as stored
      {2, 1, 0, 12, 11, 10},  // 2: mirrored left-right
      {12, 11, 10, 2, 1, 0},  // 3: turned 180 degrees
      {10, 11, 12, 0, 1, 2},  // 4: mirrored top-bottom
      {0, 10, 1, 11, 2, 12},  // 5: transposed (2 wide, 3 high from here on)
      {10, 0, 11, 1, 12, 2},  // 6: turned 90 degrees clockwise
      {12, 2, 11, 1, 10, 0},  // 7: transversed
      {2, 12, 1, 11, 0, 10},  // 8: turned 90 degrees counter-clockwise
  };
  for (int orientation = 1; orientation <= 8; ++orientation) {
    const llava::RgbImage turned = llava::apply_orientation(image, orientation);
    EXPECT_EQ(turned.width, orientation >= 5 ? 2 : 3) << orientation;
    EXPECT_EQ(turned.height, orientation >= 5 ? 3 : 2) << orientation;
    std::vector<int> got;
    for (size_t i = 0; i < turned.pixels.size(); i += 3) got.push_back(turned.pixels[i]);
    EXPECT_EQ(got, expected[orientation - 1]) << orientation;
  }
  EXPECT_EQ(llava::apply_orientation(image, 0).pixels, image.pixels);
  EXPECT_EQ(llava::apply_orientation(image, 9).pixels, image.pixels);
}

// JPEGs tagged with each orientation (little- and big-endian Exif) and a PNG with an eXIf
// chunk decode upright, with the sizes transformers' load_image gives; the pixel values
// against its processor are checked in preprocess_test.
TEST(Image, ExifTaggedFilesDecodeUprightAsLoadImageShowsThem) {
  auto info = llava::test::load_json("images/exif/exif.json");
  ASSERT_GE(info["images"].size(), 11u);
  for (const auto& entry : info["images"]) {
    const std::string file = entry["file"];
    auto bytes = read_file(data_path("images/exif/" + file));
    const llava::RgbImage image = decode_image(bytes.data(), bytes.size());
    EXPECT_EQ(image.width, entry["width"].get<int>()) << file;
    EXPECT_EQ(image.height, entry["height"].get<int>()) << file;
  }
  // The turned JPEG and the upright PNG that PIL wrote from it hold the same pixels.
  auto tagged = read_file(data_path("images/exif/o6.jpg"));
  auto upright = read_file(data_path("images/exif/o6_upright.png"));
  EXPECT_EQ(decode_image(tagged.data(), tagged.size()).pixels,
            decode_image(upright.data(), upright.size()).pixels);
}

// An Exif block that lies (offsets past its end, a count of thousands of entries, a wrong
// byte-order mark) is read as "no orientation", never past the block.
TEST(Image, ALyingExifBlockIsIgnored) {
  auto bytes = read_file(data_path("images/img01_320x240_RGB.jpg"));
  const llava::RgbImage plain = decode_image(bytes.data(), bytes.size());
  const std::vector<std::vector<uint8_t>> tiffs = {
      {'I', 'I', 42, 0, 0xff, 0xff, 0xff, 0x7f},            // IFD0 far past the end
      {'I', 'I', 42, 0, 8, 0, 0, 0, 0xff, 0xff},            // 65535 entries, none there
      {'X', 'X', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0},
      {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6},  // entry cut short
      {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 99, 0, 0, 0},
  };
  for (size_t i = 0; i < tiffs.size(); ++i) {
    std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
    app1.insert(app1.end(), tiffs[i].begin(), tiffs[i].end());
    const size_t length = app1.size() - 2;
    app1[2] = static_cast<uint8_t>(length >> 8), app1[3] = static_cast<uint8_t>(length);
    std::vector<uint8_t> file(bytes.begin(), bytes.begin() + 2);  // SOI
    file.insert(file.end(), app1.begin(), app1.end());
    file.insert(file.end(), bytes.begin() + 2, bytes.end());
    const llava::RgbImage image = decode_image(file.data(), file.size());
    EXPECT_EQ(image.width, plain.width) << i;
    EXPECT_EQ(image.pixels, plain.pixels) << i;
  }
  // The same block telling the truth (orientation 6) turns it: the test above can fail.
  std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 30, 'E', 'x', 'i', 'f', 0, 0,
                               'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0};
  std::vector<uint8_t> file(bytes.begin(), bytes.begin() + 2);
  file.insert(file.end(), app1.begin(), app1.end());
  file.insert(file.end(), bytes.begin() + 2, bytes.end());
  const llava::RgbImage turned = decode_image(file.data(), file.size());
  EXPECT_EQ(turned.width, plain.height);
  EXPECT_EQ(turned.pixels, llava::apply_orientation(plain, 6).pixels);
}

// A flat CMYK JPEG (libjpeg writes the Adobe marker and stores CMYK inverted, as Photoshop
// does) in 8x8 blocks of one colour each, at quality 100 (flat blocks decode exactly).
std::vector<uint8_t> cmyk_jpeg(const std::vector<std::array<uint8_t, 4>>& colours) {
  jpeg_compress_struct info;
  jpeg_error_mgr errors;
  info.err = jpeg_std_error(&errors);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = static_cast<JDIMENSION>(8 * colours.size());
  info.image_height = 8;
  info.input_components = 4;
  info.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&info);
  jpeg_set_colorspace(&info, JCS_CMYK);
  jpeg_set_quality(&info, 100, TRUE);
  jpeg_start_compress(&info, TRUE);
  std::vector<uint8_t> row(info.image_width * 4);
  for (size_t x = 0; x < row.size() / 4; ++x) std::copy_n(colours[x / 8].begin(), 4, &row[x * 4]);
  while (info.next_scanline < info.image_height) {
    JSAMPROW rows[1] = {row.data()};
    jpeg_write_scanlines(&info, rows, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::vector<uint8_t> bytes(buffer, buffer + size);
  std::free(buffer);
  return bytes;
}

// CMYK with the Adobe marker: the stored (inverted) values times K over 255, rounded, which is
// what Pillow's cmyk2rgb gives (nk - MULDIV255(c, nk) with nk = 255 - K: equal for all
// 65,536 pairs).
TEST(Image, AdobeCmykJpegIsConvertedToRgbAsPilConvertsIt) {
  const std::vector<std::array<uint8_t, 4>> colours = {
      {200, 100, 50, 100}, {255, 255, 255, 255}, {0, 30, 255, 128}};
  const std::vector<uint8_t> bytes = cmyk_jpeg(colours);
  const llava::RgbImage image = decode_image(bytes.data(), bytes.size());
  ASSERT_EQ(image.width, 24);
  ASSERT_EQ(image.height, 8);
  for (size_t i = 0; i < colours.size(); ++i) {
    const auto& c = colours[i];
    for (int ch = 0; ch < 3; ++ch) {
      const int expected = (c[ch] * c[3] + 127) / 255;
      for (int y : {0, 7}) {
        EXPECT_EQ(image.at(y, static_cast<int>(8 * i + 3), ch), expected)
            << "colour " << i << ", channel " << ch;
      }
    }
  }
}

}  // namespace
