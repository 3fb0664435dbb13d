// CLIPImageProcessor's steps, bit-exact with PIL where PIL is used: shortest-edge resize
// (PIL's bicubic or bilinear, 8-bit fixed point), centre crop, rescale, normalize; and
// LLaVA's "pad to square with the mean colour" option.
#pragma once

#include <string>
#include <vector>

#include "stages/vision/image.h"

namespace llava {

struct PreprocessorConfig {
  bool do_resize = true;
  int shortest_edge = 224;     // when > 0: resize so the short side is this
  int resize_height = 0;       // else: resize to exactly height x width
  int resize_width = 0;
  int resample = 3;            // PIL filter: 2 bilinear, 3 bicubic
  bool do_center_crop = true;
  int crop_height = 224;
  int crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  bool pad_to_square = false;  // LLaVA's expand2square (LlavaImageProcessor do_pad)
};

// Reads `folder`/preprocessor_config.json if present (CLIPImageProcessor's defaults
// otherwise). Throws CheckpointError for values it cannot honour.
PreprocessorConfig load_preprocessor_config(const std::string& folder);

// PIL's Image.resize(size, resample) on 8-bit RGB.
RgbImage resize(const RgbImage& image, int width, int height, int resample);
RgbImage center_crop(const RgbImage& image, int height, int width);
// center_crop(resize(image, width, height, resample), crop_height, crop_width), computing
// only the pixels the crop keeps.
RgbImage resize_and_crop(const RgbImage& image, int width, int height, int resample, int crop_height,
                         int crop_width);
RgbImage pad_to_square(const RgbImage& image, const float mean[3]);
// [3, height, width] float32, channel-major, as pixel_values. With threads > 1, bands of the
// result's rows are computed on that many threads (the same values, bit for bit).
std::vector<float> preprocess(const RgbImage& image, const PreprocessorConfig& config,
                              int threads = 1);
// The same values written to out, which holds `count` floats; std::invalid_argument
// (nothing written) when count is not the result's size.
void preprocess_into(const RgbImage& image, const PreprocessorConfig& config, float* out,
                     size_t count, int threads = 1);

}  // namespace llava
