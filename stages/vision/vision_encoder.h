// The vision stage's model: image file bytes -> pixels (decode, preprocess) -> CLIP ->
// projector -> one [image_tokens, text_hidden] embedding per image.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "stages/checkpoint/checkpoint.h"
#include "stages/vision/clip_vision.h"
#include "stages/vision/preprocess.h"
#include "stages/vision/projector.h"

namespace llava {

class VisionEncoder {
 public:
  VisionEncoder(const LlavaConfig& config, const Checkpoint& checkpoint,
                const at::TensorOptions& options);

  // Decoded and preprocessed, on the host: [3, S, S] float32. Throws RequestError.
  at::Tensor pixels(const uint8_t* data, size_t size) const;
  // pixels [N, 3, S, S] -> embeddings [N, image_tokens, text_hidden] on the device.
  at::Tensor encode(const at::Tensor& pixels) const;

 private:
  PreprocessorConfig preprocess_;
  at::TensorOptions options_;
  ClipVision clip_;
  Projector projector_;
};

}  // namespace llava
