// Image preprocessing. The resize reproduces Pillow's ImagingResample for 8-bit images:
// separable passes (horizontal, then vertical), support widened by the downscale factor,
// coefficients normalized and rounded to 22-bit fixed point, each pass rounded to uint8.
// Only the crop's window is resized, in bands of rows that threads may share, and each
// finished row is normalized straight into the destination.
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
#include "stages/parallel.h"

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

// sums[j] += p[j] * weight: both passes' inner loop. The pixel loops here are written for
// the vectorizer, and this file is compiled with -O3 whatever the build type
// (stages/CMakeLists.txt): GCC's -O2 left them scalar, 2.3 ms against 0.9 for resize + crop
// + normalize of a 320x240 image to 336 x 336. x86-64's baseline (SSE2) has no 32-bit
// vector multiply, so this loop also gets an AVX2 build, picked at run time where the CPU
// has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void accumulate(int32_t* __restrict__ sums, const uint8_t* __restrict__ p, int32_t weight, size_t n) {
  for (size_t j = 0; j < n; ++j) sums[j] += p[j] * weight;
}

// out[j] = the fixed-point sum's byte, clamped to [0, 255].
void clip_bytes(const int32_t* __restrict__ sums, uint8_t* __restrict__ out, size_t n) {
  for (size_t j = 0; j < n; ++j)
    out[j] = static_cast<uint8_t>(std::clamp(sums[j] >> kPrecisionBits, 0, 255));
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

// One resize of `image` to width x height, of which only `window` is computed: each output
// pixel depends only on its own coefficients, so these are the whole resize's values, and
// memory and time follow the window, not the resize. Either pass is skipped where its side
// keeps its size (then the window's columns or rows are the image's own).
struct ResizePlan {
  Window window{};
  bool across = false, down = false;  // whether the horizontal / vertical pass runs
  Coefficients columns, rows;         // entry j: window column x0 + j / row y0 + j
};

ResizePlan plan_resize(const RgbImage& image, int width, int height, int resample,
                       const Window& window) {
  ResizePlan plan;
  plan.window = window;
  plan.across = width != image.width;
  plan.down = height != image.height;
  if ((plan.across || plan.down) && resample != 2 && resample != 3) {
    throw RequestError("resize: only bilinear (2) and bicubic (3) resampling are supported");
  }
  if (plan.across) plan.columns = precompute(image.width, width, resample, window.x0, window.x1);
  if (plan.down) plan.rows = precompute(image.height, height, resample, window.y0, window.y1);
  return plan;
}

// Buffers a thread reuses from one image to the next (no fresh pages per image).
struct ResizeScratch {
  std::vector<uint8_t> transposed, wide, row;
  std::vector<int32_t> sums;

  // A huge image's buffers are let go rather than kept for the next one.
  void trim() {
    constexpr size_t kKeep = size_t{8} << 20;
    if (transposed.capacity() > kKeep) std::vector<uint8_t>().swap(transposed);
    if (wide.capacity() > kKeep) std::vector<uint8_t>().swap(wide);
  }
};

// Horizontal pass of input rows [r0, r1) into `wide`: each row planar, [channel][window
// column], which the vertical pass and normalizing read in order. Done as the vertical pass
// is: the rows' pixels transposed (an input column's pixels contiguous), so that each tap
// adds a whole column times one weight; then each output column is written back in place.
// The same integer sums, in the same order.
void horizontal_pass(const RgbImage& in, const Coefficients& c, int r0, int r1, ResizeScratch& s) {
  const size_t rows = static_cast<size_t>(r1 - r0), span = rows * 3, columns = c.first.size();
  int c0 = in.width, c1 = 0;  // the input columns the coefficients read
  for (size_t x = 0; x < columns; ++x) {
    c0 = std::min(c0, c.first[x]);
    c1 = std::max(c1, c.first[x] + c.count[x]);
  }
  s.transposed.resize(static_cast<size_t>(c1 - c0) * span);  // [x - c0][y - r0][channel]
  uint8_t* const transposed = s.transposed.data();           // (raw pointers: the byte stores
  for (size_t y = 0; y < rows; ++y) {                        // would otherwise reload them)
    const uint8_t* row = &in.pixels[(static_cast<size_t>(r0) + y) * in.width * 3];
    for (int x = c0; x < c1; ++x) {
      uint8_t* to = transposed + static_cast<size_t>(x - c0) * span + y * 3;
      const uint8_t* from = row + static_cast<size_t>(x) * 3;
      to[0] = from[0], to[1] = from[1], to[2] = from[2];
    }
  }
  s.sums.resize(span);
  s.row.resize(span);
  s.wide.resize(rows * columns * 3);
  const uint8_t* const column = s.row.data();  // an output column's bytes, [y][channel]
  uint8_t* const wide = s.wide.data();
  for (size_t x = 0; x < columns; ++x) {
    tap_sums(s.sums, c, x,
             [&](int column) { return transposed + static_cast<size_t>(column - c0) * span; });
    clip_bytes(s.sums.data(), s.row.data(), span);
    uint8_t* q = wide + x;
    for (size_t y = 0; y < rows; ++y, q += columns * 3) {
      q[0] = column[y * 3], q[columns] = column[y * 3 + 1], q[2 * columns] = column[y * 3 + 2];
    }
  }
}

// Window rows [j0, j1) (row j is output row y0 + j), each handed to emit(j, bytes) planar:
// [channel][window column]. Bands of rows give the same bytes however they are cut: the
// rows a band reads through the horizontal pass are computed as for any other band.
template <typename Emit>
void resize_rows(const RgbImage& image, const ResizePlan& plan, int j0, int j1, ResizeScratch& s,
                 Emit&& emit) {
  const Window& w = plan.window;
  const size_t columns = static_cast<size_t>(w.x1 - w.x0), span = columns * 3;
  if (j0 >= j1 || columns == 0) return;
  // The input rows the band reads.
  int r0 = w.y0 + j0, r1 = w.y0 + j1;
  if (plan.down) {
    r0 = plan.rows.first[j0], r1 = 0;
    for (int j = j0; j < j1; ++j) {
      r0 = std::min(r0, plan.rows.first[j]);
      r1 = std::max(r1, plan.rows.first[j] + plan.rows.count[j]);
    }
  }
  // Input rows [r0, r1) at the window's columns, planar: through the horizontal pass, or
  // the image's own pixels.
  if (plan.across) {
    horizontal_pass(image, plan.columns, r0, r1, s);
  } else {
    s.wide.resize(static_cast<size_t>(r1 - r0) * span);
    for (int r = r0; r < r1; ++r) {
      const uint8_t* from = &image.pixels[(static_cast<size_t>(r) * image.width + w.x0) * 3];
      uint8_t* to = &s.wide[static_cast<size_t>(r - r0) * span];
      for (size_t x = 0; x < columns; ++x) {
        to[x] = from[3 * x], to[columns + x] = from[3 * x + 1],
        to[2 * columns + x] = from[3 * x + 2];
      }
    }
  }
  auto line = [&](int r) { return &s.wide[static_cast<size_t>(r - r0) * span]; };
  if (!plan.down) {
    for (int j = j0; j < j1; ++j) emit(j, line(w.y0 + j));
    return;
  }
  s.sums.resize(span);
  s.row.resize(span);
  for (int j = j0; j < j1; ++j) {
    tap_sums(s.sums, plan.rows, static_cast<size_t>(j), line);
    clip_bytes(s.sums.data(), s.row.data(), span);
    emit(j, s.row.data());
  }
}

// The window as an image of its own size.
RgbImage resize_window(const RgbImage& image, int width, int height, int resample,
                       const Window& window) {
  const ResizePlan plan = plan_resize(image, width, height, resample, window);
  RgbImage out;
  out.width = std::max(0, window.x1 - window.x0);
  out.height = std::max(0, window.y1 - window.y0);
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  const size_t columns = static_cast<size_t>(out.width);
  ResizeScratch scratch;
  resize_rows(image, plan, 0, out.height, scratch, [&](int j, const uint8_t* planar) {
    uint8_t* to = &out.pixels[static_cast<size_t>(j) * columns * 3];
    for (size_t x = 0; x < columns; ++x) {
      to[3 * x] = planar[x], to[3 * x + 1] = planar[columns + x],
             to[3 * x + 2] = planar[2 * columns + x];
    }
  });
  return out;
}

// transformers' center_crop offsets (Python's floor division): top, left.
std::pair<int, int> crop_offsets(int image_height, int image_width, int height, int width) {
  auto floor_half = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  return {floor_half(image_height - height), floor_half(image_width - width)};
}

// The part of a width x height image that a centre crop to crop_height x crop_width keeps,
// and where it lands in the crop (left, top; the crop's pixels past the image are zeros).
struct CropPlacement {
  Window window;
  int left, top;
};

CropPlacement place_crop(int width, int height, int crop_height, int crop_width) {
  const auto [top, left] = crop_offsets(height, width, crop_height, crop_width);
  return {{std::max(0, left), std::min(width, left + crop_width), std::max(0, top),
           std::min(height, top + crop_height)},
          left,
          top};
}

}  // namespace

RgbImage resize(const RgbImage& image, int width, int height, int resample) {
  return resize_window(image, width, height, resample, {0, width, 0, height});
}

RgbImage resize_and_crop(const RgbImage& image, int width, int height, int resample, int crop_height,
                         int crop_width) {
  const CropPlacement crop = place_crop(width, height, crop_height, crop_width);
  const Window& window = crop.window;
  const RgbImage part = resize_window(image, width, height, resample, window);
  // The crop: the computed window at its place, zeros where the crop passes the image.
  RgbImage out;
  out.width = crop_width;
  out.height = crop_height;
  out.pixels.assign(static_cast<size_t>(crop_width) * crop_height * 3, 0);
  for (int y = 0; y < part.height; ++y) {
    std::copy_n(&part.pixels[static_cast<size_t>(y) * part.width * 3], part.width * 3,
                &out.pixels[(static_cast<size_t>(window.y0 - crop.top + y) * crop_width +
                             (window.x0 - crop.left)) *
                            3]);
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

// The steps before normalizing, as one resize (a resize without passes where the size is
// kept) of the image they start from, of which the window the crop keeps is computed.
struct Steps {
  const RgbImage* source = nullptr;  // the input, or it padded to a square
  ResizePlan plan;
  int width = 0, height = 0;  // of the result
  int left = 0, top = 0;      // where the window lands in it (zeros around it)
};

Steps plan_steps(const RgbImage& input, const PreprocessorConfig& c, RgbImage& padded) {
  Steps steps;
  steps.source = &input;
  if (c.pad_to_square) {
    const int64_t side = std::max(input.width, input.height);
    check_step_size(input, side, side, "pads to a square of");
    steps.source = &(padded = pad_to_square(input, c.mean));
  }
  const RgbImage& image = *steps.source;
  int64_t width = image.width, height = image.height;
  if (c.do_resize) {
    width = c.resize_width, height = c.resize_height;
    if (c.shortest_edge > 0) {
      // transformers' get_resize_output_image_size(default_to_square=False)
      const int64_t short_side = std::min(image.width, image.height);
      const int64_t long_side = std::max(image.width, image.height);
      const auto new_long = static_cast<int64_t>(static_cast<double>(c.shortest_edge * long_side) /
                                                 static_cast<double>(short_side));
      width = image.width <= image.height ? c.shortest_edge : new_long;
      height = image.width <= image.height ? new_long : c.shortest_edge;
    }
    check_step_size(image, width, height, "resizes to");
  }
  const int w = static_cast<int>(width), h = static_cast<int>(height);  // within the limit
  Window window{0, w, 0, h};
  steps.width = w, steps.height = h;
  if (c.do_center_crop) {
    const CropPlacement crop = place_crop(w, h, c.crop_height, c.crop_width);
    window = crop.window;
    steps.width = c.crop_width, steps.height = c.crop_height;
    steps.left = window.x0 - crop.left, steps.top = window.y0 - crop.top;
  }
  steps.plan = plan_resize(image, w, h, c.resample, window);
  return steps;
}

// Output rows a thread takes at least: below this a band's own cost (a thread, the
// horizontal pass's rows shared with its neighbours) outweighs its share. And at most this
// many bands: a 336-row crop in 8 bands is 42 rows each.
constexpr int kMinBandRows = 32;
constexpr int kMaxBands = 8;

// The steps' result, rescaled and normalized, as [3, height, width] float32 into out.
void write_normalized(const Steps& steps, const PreprocessorConfig& c, float* out, int threads) {
  // Each channel's 256 possible values: float64 rescale, then float32 normalize, as
  // transformers does. A lookup rather than that arithmetic in the loop: built by the H200
  // machine's GCC 13, one 336 x 336 image on one thread took 0.95-1.28 ms with the
  // arithmetic, 0.98-1.00 with the lookup (tests/perf/README.md, "Speed, round 10"; GCC 12
  // here made both alike).
  float table[3][256];
  for (int ch = 0; ch < 3; ++ch) {
    for (int v = 0; v < 256; ++v) {
      float x = c.do_rescale ? static_cast<float>(v * c.rescale_factor) : static_cast<float>(v);
      if (c.do_normalize) x = (x - c.mean[ch]) / c.std[ch];
      table[ch][v] = x;
    }
  }
  const Window& w = steps.plan.window;
  const int columns = std::max(0, w.x1 - w.x0), rows = std::max(0, w.y1 - w.y0);
  const size_t plane = static_cast<size_t>(steps.width) * steps.height;
  if (columns < steps.width || rows < steps.height) {  // the crop passes the image: zeros there
    for (int ch = 0; ch < 3; ++ch) std::fill_n(out + ch * plane, plane, table[ch][0]);
  }
  auto emit = [&](int j, const uint8_t* planar) {
    const size_t at = static_cast<size_t>(steps.top + j) * steps.width + steps.left;
    for (int ch = 0; ch < 3; ++ch) {
      float* to = out + ch * plane + at;
      const uint8_t* from = planar + static_cast<size_t>(ch) * columns;
      const float* values = table[ch];
      for (int x = 0; x < columns; ++x) to[x] = values[from[x]];
    }
  };
  // Bands of rows on the caller's thread and kept helpers (run_parallel), each keeping its
  // buffers for the next image.
  const int bands = std::max(1, std::min({threads, kMaxBands, rows / kMinBandRows}));
  run_parallel(static_cast<size_t>(bands), [&](size_t b) {
    thread_local ResizeScratch scratch;
    const int j0 = static_cast<int>(rows * static_cast<int64_t>(b) / bands);
    const int j1 = static_cast<int>(rows * static_cast<int64_t>(b + 1) / bands);
    resize_rows(*steps.source, steps.plan, j0, j1, scratch, emit);
    scratch.trim();
  });
}

}  // namespace

std::vector<float> preprocess(const RgbImage& input, const PreprocessorConfig& c, int threads) {
  RgbImage padded;
  const Steps steps = plan_steps(input, c, padded);
  std::vector<float> out(static_cast<size_t>(steps.width) * steps.height * 3);
  write_normalized(steps, c, out.data(), threads);
  return out;
}

void preprocess_into(const RgbImage& input, const PreprocessorConfig& c, float* out, size_t count,
                     int threads) {
  RgbImage padded;
  const Steps steps = plan_steps(input, c, padded);
  const size_t values = static_cast<size_t>(steps.width) * steps.height * 3;
  if (count != values) {
    throw std::invalid_argument("preprocess: the image gives " + std::to_string(values) +
                                " values, the destination holds " + std::to_string(count));
  }
  write_normalized(steps, c, out, threads);
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
