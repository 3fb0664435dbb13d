// Vision stage model: preprocessing on the host, CLIP and projector on the device.
#include "stages/vision/vision_encoder.h"

#include "common/errors.h"

namespace llava {

VisionEncoder::VisionEncoder(const LlavaConfig& config, const Checkpoint& checkpoint,
                             const at::TensorOptions& options)
    : preprocess_(load_preprocessor_config(checkpoint.folder())),
      options_(options),
      clip_(config, checkpoint, options),
      projector_(config, checkpoint, options) {
  if (preprocess_.crop_height != config.vision.image_size ||
      preprocess_.crop_width != config.vision.image_size) {
    throw CheckpointError(checkpoint.folder() + "/preprocessor_config.json: crop " +
                          std::to_string(preprocess_.crop_height) + "x" +
                          std::to_string(preprocess_.crop_width) + " does not match the vision " +
                          "tower's image_size " + std::to_string(config.vision.image_size));
  }
}

at::Tensor VisionEncoder::pixels(const uint8_t* data, size_t size) const {
  std::vector<float> values = preprocess(decode_image(data, size), preprocess_);
  return at::tensor(values).view({3, preprocess_.crop_height, preprocess_.crop_width});
}

at::Tensor VisionEncoder::encode(const at::Tensor& pixels) const {
  return projector_.forward(clip_.forward(pixels.to(options_)));
}

}  // namespace llava
