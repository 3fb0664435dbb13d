// Image preprocessing. The resize reproduces Pillow's ImagingResample for 8-bit images:
// separable passes (horizontal, then vertical), support widened by the downscale factor,
// coefficients normalized and rounded to 22-bit fixed point, each pass rounded to uint8.
#include "stages/vision/preprocess.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/errors.h"

namespace llava {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// For each output index: the first input index, the count, and fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out, ksize]
};

// Coefficients of output indices [from, to) of a resize from in_size to out_size (entry i is
// index from + i): a window of a huge resize costs only its own rows.
Coefficients precompute(int in_size, int out_size, int resample, int from, int to) {
  double (*filter)(double) = resample == 2 ? bilinear : bicubic;
  const double filter_support = resample == 2 ? 1.0 : 2.0;
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter_support * filter_scale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  const size_t n = static_cast<size_t>(std::max(0, to - from));
  c.first.resize(n);
  c.count.resize(n);
  c.weights.assign(n * c.ksize, 0);
  std::vector<double> k(static_cast<size_t>(c.ksize));
  for (int xx = from; xx < to; ++xx) {
    const size_t at = static_cast<size_t>(xx - from);
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filter_scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[static_cast<size_t>(x)] = filter((x + xmin - center + 0.5) * ss);
      total += k[static_cast<size_t>(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      double w = total != 0.0 ? k[static_cast<size_t>(x)] / total : k[static_cast<size_t>(x)];
      c.weights[at * c.ksize + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits)
                                     : 0.5 + w * (1 << kPrecisionBits));
    }
    c.first[at] = xmin;
    c.count[at] = xmax;
  }
  return c;
}

// sums[j] += p[j] * weight: both passes' inner loop. x86-64's baseline (SSE2) has no 32-bit
// vector multiply, so the loop also gets an AVX2 build, picked at run time where the CPU has
// it (with the transposed horizontal pass: resize + crop + normalize of a 320x240 image to
// 336 x 336, 2.28 -> 0.91 ms on the H200 machine's host).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void accumulate(int32_t* __restrict__ sums, const uint8_t* __restrict__ p, int32_t weight, size_t n) {
  for (size_t j = 0; j < n; ++j) sums[j] += p[j] * weight;
}

uint8_t clip8(int32_t sum) {
  int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

// sums = the rounding half plus c's entry `at` over its taps: line(first + i) (sums.size()
// bytes) times weight i.
template <typename Line>
void tap_sums(std::vector<int32_t>& sums, const Coefficients& c, size_t at, Line line) {
  std::fill(sums.begin(), sums.end(), 1 << (kPrecisionBits - 1));
  const int32_t* w = &c.weights[at * c.ksize];
  for (int i = 0; i < c.count[at]; ++i) accumulate(sums.data(), line(c.first[at] + i), w[i], sums.size());
}

// The part of a resized image that is computed: columns [x0, x1), rows [y0, y1).
struct Window {
  int x0, x1, y0, y1;
};

// Horizontal pass: input rows [r0, r1) into `out` (x1 - x0 columns, r1 - r0 rows); column j
// of out is output column x0 + j, whose coefficients are c's entry j. Done as the vertical
// pass is: the rows' pixels transposed (an input column's pixels contiguous), so that each
// tap adds a whole column times one weight, which the compiler vectorizes; then each
// output column is written back in place. The same integer sums, in the same order.
void horizontal_pass(const RgbImage& in, RgbImage& out, const Coefficients& c, int r0, int r1) {
  const size_t rows = static_cast<size_t>(std::max(0, r1 - r0)), span = rows * 3;
  if (rows == 0 || c.first.empty()) return;
  int c0 = in.width, c1 = 0;  // the input columns the coefficients read
  for (size_t x = 0; x < c.first.size(); ++x) {
    c0 = std::min(c0, c.first[x]);
    c1 = std::max(c1, c.first[x] + c.count[x]);
  }
  std::vector<uint8_t> columns(static_cast<size_t>(std::max(0, c1 - c0)) * span);  // [x - c0][y - r0][channel]
  for (size_t y = 0; y < rows; ++y) {
    const uint8_t* row = &in.pixels[(static_cast<size_t>(r0) + y) * in.width * 3];
    for (int x = c0; x < c1; ++x) {
      uint8_t* to = &columns[static_cast<size_t>(x - c0) * span + y * 3];
      const uint8_t* from = row + static_cast<size_t>(x) * 3;
      to[0] = from[0], to[1] = from[1], to[2] = from[2];
    }
  }
  std::vector<int32_t> sums(span);
  for (int x = 0; x < out.width; ++x) {
    tap_sums(sums, c, static_cast<size_t>(x),
             [&](int column) { return &columns[static_cast<size_t>(column - c0) * span]; });
    uint8_t* q = &out.pixels[static_cast<size_t>(x) * 3];
    const size_t stride = static_cast<size_t>(out.width) * 3;
    for (size_t y = 0; y < rows; ++y, q += stride) {
      q[0] = clip8(sums[y * 3]), q[1] = clip8(sums[y * 3 + 1]), q[2] = clip8(sums[y * 3 + 2]);
    }
  }
}

// Vertical pass: `in` holds input rows from r0 on; row j of `out` is output row y0 + j, with
// c's entry j; a whole row per tap (contiguous, so the compiler vectorizes it).
void vertical_pass(const RgbImage& in, int r0, RgbImage& out, const Coefficients& c) {
  const size_t span = static_cast<size_t>(out.width) * 3;
  std::vector<int32_t> sums(span);
  for (int y = 0; y < out.height; ++y) {
    tap_sums(sums, c, static_cast<size_t>(y),
             [&](int row) { return &in.pixels[static_cast<size_t>(row - r0) * in.width * 3]; });
    uint8_t* q = &out.pixels[static_cast<size_t>(y) * span];
    for (size_t j = 0; j < span; ++j) q[j] = clip8(sums[j]);
  }
}

// `window` of PIL's resize to width x height (horizontal pass, then vertical), as an image of
// the window's size: each output pixel depends only on its own coefficients, so these are
// the whole resize's values, and memory and time follow the window, not the resize.
RgbImage resize_window(const RgbImage& image, int width, int height, int resample, const Window& window) {
  if (resample != 2 && resample != 3) {
    throw RequestError("resize: only bilinear (2) and bicubic (3) resampling are supported");
  }
  const int columns = window.x1 - window.x0, rows = window.y1 - window.y0;
  // The input rows the window's output rows read.
  int r0 = window.y0, r1 = window.y1;
  Coefficients vertical;
  if (height != image.height) {
    vertical = precompute(image.height, height, resample, window.y0, window.y1);
    r0 = rows > 0 ? vertical.first.front() : 0;
    r1 = rows > 0 ? vertical.first.back() + vertical.count.back() : 0;
    for (size_t j = 0; j < vertical.first.size(); ++j) {
      r0 = std::min(r0, vertical.first[j]);
      r1 = std::max(r1, vertical.first[j] + vertical.count[j]);
    }
  }
  RgbImage wide;  // input rows [r0, r1), the window's columns
  wide.width = columns;
  wide.height = r1 - r0;
  wide.pixels.assign(static_cast<size_t>(std::max(0, columns)) * std::max(0, r1 - r0) * 3, 0);
  if (width != image.width) {
    horizontal_pass(image, wide, precompute(image.width, width, resample, window.x0, window.x1), r0, r1);
  } else {
    for (int y = r0; y < r1; ++y) {
      std::copy_n(&image.pixels[(static_cast<size_t>(y) * image.width + window.x0) * 3], columns * 3,
                  &wide.pixels[static_cast<size_t>(y - r0) * columns * 3]);
    }
  }
  if (height == image.height) return wide;
  RgbImage out;
  out.width = columns;
  out.height = rows;
  out.pixels.assign(static_cast<size_t>(std::max(0, columns)) * std::max(0, rows) * 3, 0);
  vertical_pass(wide, r0, out, vertical);
  return out;
}

// transformers' center_crop offsets (Python's floor division): top, left.
std::pair<int, int> crop_offsets(int image_height, int image_width, int height, int width) {
  auto floor_half = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  return {floor_half(image_height - height), floor_half(image_width - width)};
}

}  // namespace

RgbImage resize(const RgbImage& image, int width, int height, int resample) {
  return resize_window(image, width, height, resample, {0, width, 0, height});
}

RgbImage resize_and_crop(const RgbImage& image, int width, int height, int resample, int crop_height,
                         int crop_width) {
  const auto [top, left] = crop_offsets(height, width, crop_height, crop_width);
  const Window window{std::max(0, left), std::min(width, left + crop_width), std::max(0, top),
                      std::min(height, top + crop_height)};
  const RgbImage part = resize_window(image, width, height, resample, window);
  // The crop: the computed window at its place, zeros where the crop passes the image.
  RgbImage out;
  out.width = crop_width;
  out.height = crop_height;
  out.pixels.assign(static_cast<size_t>(crop_width) * crop_height * 3, 0);
  for (int y = 0; y < part.height; ++y) {
    std::copy_n(&part.pixels[static_cast<size_t>(y) * part.width * 3], part.width * 3,
                &out.pixels[(static_cast<size_t>(window.y0 - top + y) * crop_width + (window.x0 - left)) * 3]);
  }
  return out;
}

RgbImage center_crop(const RgbImage& image, int height, int width) {
  const auto [top, left] = crop_offsets(image.height, image.width, height, width);
  RgbImage out;
  out.width = width;
  out.height = height;
  out.pixels.assign(static_cast<size_t>(width) * height * 3, 0);
  for (int y = 0; y < height; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= image.height) continue;
    for (int x = 0; x < width; ++x) {
      const int sx = x + left;
      if (sx < 0 || sx >= image.width) continue;
      for (int ch = 0; ch < 3; ++ch) {
        out.pixels[(static_cast<size_t>(y) * width + x) * 3 + ch] = image.at(sy, sx, ch);
      }
    }
  }
  return out;
}

RgbImage pad_to_square(const RgbImage& image, const float mean[3]) {
  if (image.width == image.height) return image;
  const int side = std::max(image.width, image.height);
  RgbImage out;
  out.width = out.height = side;
  out.pixels.resize(static_cast<size_t>(side) * side * 3);
  for (size_t i = 0; i < out.pixels.size(); ++i) {
    out.pixels[i] = static_cast<uint8_t>(static_cast<int>(mean[i % 3] * 255));  // int(m * 255)
  }
  const int top = (side - image.height) / 2, left = (side - image.width) / 2;
  for (int y = 0; y < image.height; ++y) {
    std::copy_n(&image.pixels[static_cast<size_t>(y) * image.width * 3], image.width * 3,
                &out.pixels[(static_cast<size_t>(y + top) * side + left) * 3]);
  }
  return out;
}

namespace {

// The image the steps before normalization leave: `input` itself where none runs (never
// copied), else `padded` / `sized`, which hold the steps' images.
// An image whose steps would make a picture over the pixel limit (a 1 x 100,000 strip
// resized to a 336 short side is 336 x 33,600,000): refused before any of it is made.
void check_step_size(const RgbImage& image, int64_t width, int64_t height, const char* step) {
  const int64_t limit = ImageLimits{}.max_pixels;
  if (width * height <= limit) return;
  const int64_t short_side = std::max(1, std::min(image.width, image.height));
  throw RequestError("image: " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                     " (aspect ratio " + std::to_string(std::max(image.width, image.height) / short_side) +
                     ":1) " + step + " " + std::to_string(width) + "x" + std::to_string(height) +
                     ", over the limit of " + std::to_string(limit) + " pixels; crop or pad it nearer to square");
}

const RgbImage& resized_image(const RgbImage& input, const PreprocessorConfig& c, RgbImage& padded,
                              RgbImage& sized) {
  const RgbImage* image = &input;
  if (c.pad_to_square) {
    const int64_t side = std::max(input.width, input.height);
    check_step_size(input, side, side, "pads to a square of");
    image = &(padded = pad_to_square(input, c.mean));
  }
  if (c.do_resize) {
    int64_t width = c.resize_width, height = c.resize_height;
    if (c.shortest_edge > 0) {
      // transformers' get_resize_output_image_size(default_to_square=False)
      const int64_t short_side = std::min(image->width, image->height);
      const int64_t long_side = std::max(image->width, image->height);
      const auto new_long = static_cast<int64_t>(static_cast<double>(c.shortest_edge * long_side) /
                                                 static_cast<double>(short_side));
      width = image->width <= image->height ? c.shortest_edge : new_long;
      height = image->width <= image->height ? new_long : c.shortest_edge;
    }
    check_step_size(*image, width, height, "resizes to");
    const int w = static_cast<int>(width), h = static_cast<int>(height);  // within the limit
    return sized = c.do_center_crop ? resize_and_crop(*image, w, h, c.resample, c.crop_height, c.crop_width)
                                    : resize(*image, w, h, c.resample);
  }
  if (c.do_center_crop) return sized = center_crop(*image, c.crop_height, c.crop_width);
  return *image;
}

// image's [3, height, width] float32 values into out.
void normalize_into(const RgbImage& image, const PreprocessorConfig& c, float* out) {
  // Each channel's 256 possible values: float64 rescale, then float32 normalize, as
  // transformers does.
  float table[3][256];
  for (int ch = 0; ch < 3; ++ch) {
    for (int v = 0; v < 256; ++v) {
      float x = c.do_rescale ? static_cast<float>(v * c.rescale_factor) : static_cast<float>(v);
      if (c.do_normalize) x = (x - c.mean[ch]) / c.std[ch];
      table[ch][v] = x;
    }
  }
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < plane; ++i) {
    for (int ch = 0; ch < 3; ++ch) out[static_cast<size_t>(ch) * plane + i] = table[ch][image.pixels[i * 3 + ch]];
  }
}

}  // namespace

std::vector<float> preprocess(const RgbImage& input, const PreprocessorConfig& c) {
  RgbImage padded, sized;
  const RgbImage& image = resized_image(input, c, padded, sized);
  std::vector<float> out(static_cast<size_t>(image.width) * image.height * 3);
  normalize_into(image, c, out.data());
  return out;
}

void preprocess_into(const RgbImage& input, const PreprocessorConfig& c, float* out, size_t count) {
  RgbImage padded, sized;
  const RgbImage& image = resized_image(input, c, padded, sized);
  const size_t values = static_cast<size_t>(image.width) * image.height * 3;
  if (count != values) {
    throw std::invalid_argument("preprocess: the image gives " + std::to_string(values) +
                                " values, the destination holds " + std::to_string(count));
  }
  normalize_into(image, c, out);
}

PreprocessorConfig load_preprocessor_config(const std::string& folder) {
  PreprocessorConfig c;
  const std::string path = folder + "/preprocessor_config.json";
  if (!std::filesystem::exists(path)) return c;
  nlohmann::json j;
  try {
    std::ifstream(path) >> j;
    auto read = [&](const char* key, auto& into) {
      if (j.contains(key) && !j[key].is_null()) into = j[key].get<std::decay_t<decltype(into)>>();
    };
    read("do_resize", c.do_resize);
    read("resample", c.resample);
    read("do_center_crop", c.do_center_crop);
    read("do_rescale", c.do_rescale);
    read("rescale_factor", c.rescale_factor);
    read("do_normalize", c.do_normalize);
    read("do_pad", c.pad_to_square);
    if (j.contains("size")) {
      const auto& size = j["size"];
      if (size.is_number()) {
        c.shortest_edge = size.get<int>();
      } else if (size.contains("shortest_edge")) {
        c.shortest_edge = size["shortest_edge"].get<int>();
      } else {
        c.shortest_edge = 0;
        c.resize_height = size.at("height").get<int>();
        c.resize_width = size.at("width").get<int>();
      }
    }
    if (j.contains("crop_size")) {
      const auto& crop = j["crop_size"];
      if (crop.is_number()) {
        c.crop_height = c.crop_width = crop.get<int>();
      } else {
        c.crop_height = crop.at("height").get<int>();
        c.crop_width = crop.at("width").get<int>();
      }
    }
    for (const char* key : {"image_mean", "image_std"}) {
      if (!j.contains(key)) continue;
      auto values = j[key].get<std::vector<float>>();
      if (values.size() != 3) throw CheckpointError(path + ": " + key + " needs 3 values");
      std::copy(values.begin(), values.end(), std::string(key) == "image_mean" ? c.mean : c.std);
    }
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(path + ": " + e.what());
  }
  if (c.resample != 2 && c.resample != 3) {
    throw CheckpointError(path + ": resample " + std::to_string(c.resample) +
                          " is not supported (2 bilinear, 3 bicubic)");
  }
  if (c.crop_height <= 0 || c.crop_width <= 0 || (c.do_resize && c.shortest_edge <= 0 &&
                                                  (c.resize_height <= 0 || c.resize_width <= 0))) {
    throw CheckpointError(path + ": sizes must be positive");
  }
  return c;
}

}  // namespace llava
