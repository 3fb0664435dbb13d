// Vision stage model: preprocessing on the host, CLIP and projector on the device.
#include "stages/vision/vision_encoder.h"

#include <algorithm>
#include <stdexcept>

#include "common/errors.h"

namespace llava {

VisionEncoder::VisionEncoder(const LlavaConfig& config, const Checkpoint& checkpoint,
                             const at::TensorOptions& options, bool cuda_graphs)
    : preprocess_(load_preprocessor_config(checkpoint.folder())),
      options_(options),
      clip_(config, checkpoint, options),
      projector_(config, checkpoint, options),
      graphs_(options.device(), cuda_graphs) {
  if (preprocess_.crop_height != config.vision.image_size ||
      preprocess_.crop_width != config.vision.image_size) {
    throw CheckpointError(checkpoint.folder() + "/preprocessor_config.json: crop " +
                          std::to_string(preprocess_.crop_height) + "x" +
                          std::to_string(preprocess_.crop_width) + " does not match the vision " +
                          "tower's image_size " + std::to_string(config.vision.image_size));
  }
}

at::Tensor VisionEncoder::pixels(const uint8_t* data, size_t size) const {
  at::Tensor out = at::empty({3, preprocess_.crop_height, preprocess_.crop_width}, at::kFloat);
  pixels_into(data, size, out);
  return out;
}

void VisionEncoder::pixels_into(const uint8_t* data, size_t size, at::Tensor out,
                                int threads) const {
  if (!out.is_contiguous() || out.scalar_type() != at::kFloat || out.dim() != 3 ||
      out.size(0) != 3) {
    throw std::invalid_argument(
        "pixels_into: the destination is not a contiguous float32 [3, S, S] tensor");
  }
  preprocess_into(decode_image(data, size), preprocess_, out.data_ptr<float>(),
                  static_cast<size_t>(out.numel()), threads);
}

at::Tensor VisionEncoder::pixel_batch(int64_t images) const {
  return at::empty(
      {images, 3, preprocess_.crop_height, preprocess_.crop_width},
      at::TensorOptions().dtype(at::kFloat).pinned_memory(options_.device().is_cuda()));
}

at::Tensor VisionEncoder::encode(const at::Tensor& pixels) {
  // float32 to the device (asynchronous from pinned memory); the patch embedding casts.
  const at::Tensor on_device =
      pixels.to(options_.device(), pixels.scalar_type(), /*non_blocking=*/true);
  const int64_t images = pixels.size(0);
  if (graphs_.enabled() && images <= kGraphImages) {
    // Inside a graph the flash kernel attends (cuDNN's plans are not made for capture).
    return graphs_.run(images, {on_device}, [&](const std::vector<at::Tensor>& in) {
      return projector_.forward(clip_.forward(in[0], /*cudnn_attention=*/false));
    });
  }
  if (!options_.device().is_cuda() || images <= kGraphImages) return projector_.forward(clip_.forward(on_device));
  // Padded with copies of the first image; their embeddings are dropped.
  const int64_t padded = (images + kBatchBucket - 1) / kBatchBucket * kBatchBucket;
  at::Tensor batch = on_device;
  if (padded > images) batch = at::cat({on_device, on_device[0].expand({padded - images, -1, -1, -1})});
  return projector_.forward(clip_.forward(batch)).narrow(0, 0, images);
}

void VisionEncoder::warm_up(int64_t max_images) {
  if (!options_.device().is_cuda()) return;
  std::vector<int64_t> sizes;
  for (int64_t n = 1; n <= std::min(max_images, kGraphImages); ++n) sizes.push_back(n);
  for (int64_t n = kBatchBucket; n < max_images + kBatchBucket; n += kBatchBucket) {
    if (n > kGraphImages) sizes.push_back(std::min(n, max_images));
  }
  for (int64_t n : sizes) {
    const at::Tensor embeddings = encode(at::zeros({n, 3, preprocess_.crop_height, preprocess_.crop_width}));
    at::empty(embeddings.sizes(), embeddings.options().device(at::kCPU).pinned_memory(true)).copy_(embeddings);
  }
}

}  // namespace llava
