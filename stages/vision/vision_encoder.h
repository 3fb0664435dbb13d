// The vision stage's model: image file bytes -> pixels (decode, preprocess) -> CLIP ->
// projector -> one [image_tokens, text_hidden] embedding per image.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "stages/checkpoint/checkpoint.h"
#include "stages/graph_cache.h"
#include "stages/vision/clip_vision.h"
#include "stages/vision/preprocess.h"
#include "stages/vision/projector.h"

namespace llava {

class VisionEncoder {
 public:
  // `cuda_graphs`: batches of up to kGraphImages run as CUDA graphs (on CUDA).
  VisionEncoder(const LlavaConfig& config, const Checkpoint& checkpoint,
                const at::TensorOptions& options, bool cuda_graphs = true);
  // At one image the tower's ~300 kernel launches cost more on the host than the GPU
  // takes to run them; from a few images on the GPU is the bound.
  static constexpr int64_t kGraphImages = 4;
  // Larger batches run padded to a multiple of this many images, so that the shapes (and
  // cuDNN's attention plans, built once per shape) stay few.
  static constexpr int64_t kBatchBucket = 8;

  // Decoded and preprocessed, on the host: [3, S, S] float32. Throws RequestError.
  at::Tensor pixels(const uint8_t* data, size_t size) const;
  // The same into `out`, a [3, S, S] float32 row of pixel_batch (threads may fill rows of
  // one batch at once); `threads` > 1 preprocesses bands of the image's rows on that many.
  void pixels_into(const uint8_t* data, size_t size, at::Tensor out, int threads = 1) const;
  // Room for n images' pixels [n, 3, S, S] float32 on the host, pinned where the model
  // runs on CUDA: encode's copy of it to the device is then one DMA at full speed (32
  // images, 43 MB, took milliseconds from pageable memory).
  at::Tensor pixel_batch(int64_t images) const;
  // pixels [N, 3, S, S] -> embeddings [N, image_tokens, text_hidden] on the device
  // (a graph's output buffer for small batches: valid until the next call).
  at::Tensor encode(const at::Tensor& pixels);
  size_t cuda_graphs() const { return graphs_.size(); }
  // f(tensor&) on every weight (CLIP, then the projector); f may replace one by an equal
  // tensor elsewhere. Captured graphs read the old addresses: call forget_graphs() after.
  void visit_tensors(const std::function<void(at::Tensor&)>& f) {
    clip_.visit(f);
    projector_.visit(f);
  }
  void forget_graphs() { graphs_.clear(); }
  // On CUDA, runs every batch shape up to `max_images` once (graphs captured, cuDNN's
  // plans built, pinned host buffers for the embeddings cached), so that no request pays
  // for them: measured on an H100, a first batch of 30 images took 272 ms in the worker
  // against 50 ms warm.
  void warm_up(int64_t max_images);

 private:
  PreprocessorConfig preprocess_;
  at::TensorOptions options_;
  ClipVision clip_;
  Projector projector_;
  GraphCache graphs_;  // by image count
};

}  // namespace llava
