// Our preprocessing against CLIPImageProcessor (PIL) on 20 varied images: sizes, aspect
// ratios, grayscale, alpha, palette; JPEG, PNG, BMP, GIF.
#include "stages/vision/preprocess.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

#include "common/errors.h"
#include "tests/stages/reference.h"

namespace {

using llava::test::data_path;
using llava::test::read_file;

// "plain.07": the reference tensor of image i.
std::string key(const std::string& kind, size_t i) {
  return kind + (i < 10 ? ".0" : ".") + std::to_string(i);
}

llava::RgbImage load(const std::string& file) {
  auto bytes = read_file(data_path("images/" + file));
  return llava::decode_image(bytes.data(), bytes.size());
}

double mean_abs(const std::vector<float>& ours, const at::Tensor& reference) {
  at::Tensor o = at::from_blob(const_cast<float*>(ours.data()), reference.sizes(), at::kFloat);
  return (o - reference).abs().mean().item<double>();
}

TEST(Preprocess, ReadsThePreprocessorConfig) {
  auto c = llava::load_preprocessor_config(data_path("tiny-llava"));
  EXPECT_EQ(c.shortest_edge, 56);
  EXPECT_EQ(c.crop_height, 56);
  EXPECT_EQ(c.resample, 3);
  EXPECT_FLOAT_EQ(c.mean[0], 0.48145466f);
  EXPECT_FALSE(c.pad_to_square);
}

TEST(Preprocess, MatchesClipImageProcessorOnTwentyImages) {
  auto info = llava::test::load_json("images/preprocess.json");
  auto reference = llava::test::load_tensors("images/preprocess.safetensors");
  auto config = llava::load_preprocessor_config(data_path("tiny-llava"));
  double worst = 0;
  for (size_t i = 0; i < info["images"].size(); ++i) {
    const std::string file = info["images"][i]["file"];
    double diff = mean_abs(llava::preprocess(load(file), config), reference[key("plain", i)]);
    worst = std::max(worst, diff);
    EXPECT_LE(diff, 0.01) << file;
    // Decoding matches PIL's (libjpeg-turbo for JPEG) and so does the resize (the two tests
    // below); what remains is transformers' processor against PIL itself.
    EXPECT_LT(diff, 5e-4) << file;
  }
  RecordProperty("worst_mean_abs", std::to_string(worst));
}

// JPEGs and a PNG tagged with every Exif orientation, against transformers' load_image
// (which applies ImageOps.exif_transpose) + CLIPImageProcessor: the same values as for any
// untagged image, so the turn is the one PIL makes.
TEST(Preprocess, ExifOrientedImagesMatchLoadImageAndTheProcessor) {
  auto info = llava::test::load_json("images/exif/exif.json");
  auto reference = llava::test::load_tensors("images/exif/exif.safetensors");
  auto config = llava::load_preprocessor_config(data_path("tiny-llava"));
  ASSERT_GE(info["images"].size(), 11u);
  for (size_t i = 0; i < info["images"].size(); ++i) {
    const std::string file = info["images"][i]["file"];
    EXPECT_LT(mean_abs(llava::preprocess(load("exif/" + file), config), reference[key("exif", i)]), 5e-4)
        << file;
  }
  // Ignoring the tag would be caught: orientation 6 against the untagged processor values.
  EXPECT_GT(mean_abs(llava::preprocess(load("exif/o1.jpg"), config), reference[key("exif", 5)]), 0.05);
}

TEST(Preprocess, PadToSquareMatchesLlavaExpand2Square) {
  auto info = llava::test::load_json("images/preprocess.json");
  auto reference = llava::test::load_tensors("images/preprocess.safetensors");
  auto config = llava::load_preprocessor_config(data_path("tiny-llava"));
  config.pad_to_square = true;
  for (size_t i = 0; i < info["images"].size(); ++i) {
    const std::string file = info["images"][i]["file"];
    double diff = mean_abs(llava::preprocess(load(file), config), reference[key("pad", i)]);
    EXPECT_LT(diff, 1e-6) << file;
  }
}

// preprocess_into (what the vision worker writes into its pinned batch) gives
// preprocess's values for every combination of steps, and refuses a destination of
// another size without writing to it.
TEST(Preprocess, IntoADestinationGivesTheSameValuesAndChecksItsSize) {
  const llava::RgbImage image = load("img01_320x240_RGB.jpg");
  auto base = llava::load_preprocessor_config(data_path("tiny-llava"));
  for (int variant = 0; variant < 4; ++variant) {
    llava::PreprocessorConfig c = base;
    c.pad_to_square = variant == 1;
    c.do_resize = variant < 2;
    c.do_center_crop = variant != 3;  // 3: no step before normalizing
    const std::vector<float> expected = llava::preprocess(image, c);
    ASSERT_EQ(expected.size(), variant == 3 ? 320u * 240 * 3 : 56u * 56 * 3) << variant;
    std::vector<float> out(expected.size() + 1, -7.0f);
    llava::preprocess_into(image, c, out.data(), expected.size());
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), out.begin())) << variant;
    EXPECT_EQ(out.back(), -7.0f) << variant;  // nothing past the values
    std::vector<float> wrong(expected.size() + 1, -7.0f);
    EXPECT_THROW(llava::preprocess_into(image, c, wrong.data(), wrong.size()),
                 std::invalid_argument)
        << variant;
    EXPECT_TRUE(std::all_of(wrong.begin(), wrong.end(), [](float v) { return v == -7.0f; }))
        << variant;
  }
}

llava::PreprocessorConfig clip_336() {
  llava::PreprocessorConfig c;
  c.shortest_edge = 336;
  c.crop_height = c.crop_width = 336;
  return c;
}

llava::RgbImage striped(int width, int height) {
  llava::RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < image.pixels.size(); ++i)
    image.pixels[i] = static_cast<uint8_t>((i * 37) % 251);
  return image;
}

// pixel_values from an 8-bit image as transformers makes them: float64 rescale, float32
// normalize, channel-major.
std::vector<float> normalized(const llava::RgbImage& image, const llava::PreprocessorConfig& c) {
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  std::vector<float> out(plane * 3);
  for (size_t i = 0; i < plane; ++i) {
    for (int ch = 0; ch < 3; ++ch) {
      const float x = static_cast<float>(image.pixels[i * 3 + ch] * c.rescale_factor);
      out[ch * plane + i] = (x - c.mean[ch]) / c.std[ch];
    }
  }
  return out;
}

// What the vision worker computes for LLaVA-1.5 (resize, crop and normalize in one pass over
// bands of rows), on one thread and on several: PIL's resized pixels, normalized, bit for bit.
TEST(Preprocess, At336OnAnyNumberOfThreadsIsPilsPixelsNormalizedBitForBit) {
  auto info = llava::test::load_json("images/preprocess.json");
  ASSERT_GE(info["images"].size(), 20u);
  const llava::PreprocessorConfig c = clip_336();
  for (size_t i = 0; i < info["images"].size(); ++i) {
    const std::string file = info["images"][i]["file"];
    auto pil_bytes = read_file(data_path("images/resized336/" + key("", i).substr(1) + ".png"));
    const std::vector<float> expected =
        normalized(llava::decode_image(pil_bytes.data(), pil_bytes.size()), c);
    const llava::RgbImage image = load(file);
    for (int threads : {1, 2, 3, 8, 64}) {
      EXPECT_EQ(llava::preprocess(image, c, threads), expected)
          << file << ", " << threads << " threads";
    }
  }
}

// Every combination of steps (padding, a resize up or down, a crop inside the image or past
// it) gives the same values on several threads as on one, and those of the steps done one
// after the other on whole images.
TEST(Preprocess, BandsOnThreadsGiveTheValuesOfTheStepsOneAfterTheOther) {
  const llava::RgbImage wide = striped(1000, 300), narrow = striped(40, 900),
                        small = striped(30, 20);
  for (const llava::RgbImage* image : {&wide, &narrow, &small}) {
    for (int variant = 0; variant < 6; ++variant) {
      llava::PreprocessorConfig c = clip_336();
      c.pad_to_square = variant == 1 || variant == 4;
      c.do_resize = variant <= 2;  // 3-5: the image's own size
      c.do_center_crop = variant != 2 && variant != 5;
      c.resample = variant == 0 ? 2 : 3;
      llava::RgbImage steps = c.pad_to_square ? llava::pad_to_square(*image, c.mean) : *image;
      if (c.do_resize) {
        const int w = steps.width, h = steps.height, s = c.shortest_edge;
        const int nw = w <= h ? s : static_cast<int>(static_cast<double>(s * int64_t{w}) / h);
        const int nh = w <= h ? static_cast<int>(static_cast<double>(s * int64_t{h}) / w) : s;
        steps = llava::resize(steps, nw, nh, c.resample);
      }
      if (c.do_center_crop) steps = llava::center_crop(steps, c.crop_height, c.crop_width);
      const std::vector<float> expected = normalized(steps, c);
      const std::string what = std::to_string(image->width) + "x" + std::to_string(image->height) +
                               ", variant " + std::to_string(variant);
      for (int threads : {1, 4, 7}) {
        EXPECT_EQ(llava::preprocess(*image, c, threads), expected)
            << what << ", " << threads << " threads";
      }
    }
  }
}

// LLaVA-1.5's real size: PIL's bicubic resize + centre crop to 336, compared pixel by pixel.
TEST(Preprocess, ResizeAt336IsBitExactWithPil) {
  auto info = llava::test::load_json("images/preprocess.json");
  for (size_t i = 0; i < info["images"].size(); ++i) {
    const std::string file = info["images"][i]["file"];
    auto expected_bytes = read_file(data_path("images/resized336/" + key("", i).substr(1) + ".png"));
    auto expected = llava::decode_image(expected_bytes.data(), expected_bytes.size());
    llava::RgbImage image = load(file);
    const int w = image.width, h = image.height, s = 336;
    const int nw = w <= h ? s : static_cast<int>(static_cast<double>(s * int64_t{w}) / h);
    const int nh = w <= h ? static_cast<int>(static_cast<double>(s * int64_t{h}) / w) : s;
    auto ours = llava::center_crop(llava::resize(image, nw, nh, 3), s, s);
    ASSERT_EQ(ours.pixels.size(), expected.pixels.size());
    // The crop-only resize (what preprocess runs) computes the same pixels.
    EXPECT_EQ(llava::resize_and_crop(image, nw, nh, 3, s, s).pixels, ours.pixels) << file;
    double total = 0;
    int worst = 0;
    for (size_t p = 0; p < ours.pixels.size(); ++p) {
      int d = std::abs(int(ours.pixels[p]) - int(expected.pixels[p]));
      total += d;
      worst = std::max(worst, d);
    }
    EXPECT_EQ(worst, 0) << file << ": mean difference " << total / ours.pixels.size();
  }
}

// A 1 x 100,000 strip resized to a 336 short side would be 336 x 33,600,000 pixels (11 GB of
// bytes): refused at once, naming the sizes and the aspect ratio, before anything is made.
TEST(Preprocess, AnExtremeAspectRatioIsRefusedFromTheResizedSize) {
  const llava::RgbImage strip = striped(1, 100'000);
  try {
    llava::preprocess(strip, clip_336());
    FAIL() << "a 1x100000 image was preprocessed";
  } catch (const llava::RequestError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("1x100000 (aspect ratio 100000:1) resizes to 336x33600000"), std::string::npos) << what;
  }
  llava::PreprocessorConfig padded = clip_336();
  padded.pad_to_square = true;
  try {
    llava::preprocess(striped(2, 20'000), padded);
    FAIL() << "a 2x20000 image was padded to 20000x20000";
  } catch (const llava::RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("pads to a square of 20000x20000"), std::string::npos) << e.what();
  }
}

// Within the limit, a long strip costs only the crop's pixels and gives the whole resize's.
TEST(Preprocess, ALongStripWithinTheLimitMatchesTheCropOfTheWholeResize) {
  for (auto [w, h] : {std::pair{3, 700}, {700, 3}, {1, 250}, {5, 337}}) {
    const llava::RgbImage image = striped(w, h);
    const int nw = w <= h ? 336 : static_cast<int>(static_cast<double>(336 * int64_t{w}) / h);
    const int nh = w <= h ? static_cast<int>(static_cast<double>(336 * int64_t{h}) / w) : 336;
    const auto whole = llava::center_crop(llava::resize(image, nw, nh, 3), 336, 336);
    EXPECT_EQ(llava::resize_and_crop(image, nw, nh, 3, 336, 336).pixels, whole.pixels) << w << "x" << h;
  }
}

}  // namespace
