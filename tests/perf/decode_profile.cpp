// Times each operation of one decode step at LLaVA-1.5-7B shapes (float16, batch 1), on
// random weights, to find where a step's time goes. Prints a table, ms per call.
//   decode_profile DEVICE [CONTEXT [CHECKPOINT [none|int8|int4]]]
// With a checkpoint (its layers quantized as asked), also times the real decoder's
// CONTEXT-token prompt forward and one-token forward after it, and the worker's decode
// step at batch 1, 8 and 32. With LLAVA_PIPE_PROFILE set, one step of each batch (or, with
// LLAVA_PIPE_PROFILE=prefill, one prompt forward) runs between cudaProfilerStart and
// cudaProfilerStop, for
//   ncu --profile-from-start off --metrics gpu__time_duration.sum decode_profile ...
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "common/model_config.h"
#include "stages/attention.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/generator.h"
#include "stages/language/linear.h"
#include "stages/language/llama_decoder.h"
#include "stages/device.h"
#include "tests/perf/profile_range.h"

int main(int argc, char** argv) {
  c10::InferenceMode inference;
  const at::Device device(argc > 1 ? argv[1] : "cpu");
  const int64_t context = argc > 2 ? std::stoll(argv[2]) : 680;
  const auto f16 = at::TensorOptions().dtype(device.is_cuda() ? at::kHalf : at::kFloat).device(device);
  llava::initialize_device(device);
  auto time_ms = [&](const char* name, int reps, const std::function<void()>& op) {
    for (int i = 0; i < 3; ++i) op();
    llava::synchronize(device);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) op();
    llava::synchronize(device);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    std::printf("%-44s %10.4f ms\n", name, ms);
    return ms;
  };
  const int64_t h = 4096, inter = 11008, heads = 32, d = 128, vocab = 32064;
  at::Tensor x = at::randn({1, 1, h}, f16);
  at::Tensor w_qkv = at::randn({3 * h, h}, f16) * 0.01, w_o = at::randn({h, h}, f16) * 0.01;
  at::Tensor w_gate_up = at::randn({2 * inter, h}, f16) * 0.01, w_down = at::randn({h, inter}, f16) * 0.01;
  at::Tensor w_head = at::randn({vocab, h}, f16) * 0.01;
  at::Tensor mid = at::randn({1, 1, inter}, f16);
  at::Tensor cache = at::randn({4, heads, 1024, d}, f16);  // [slots, heads, max_tokens, D]
  at::Tensor q = at::randn({1, heads, 1, d}, f16);
  at::Tensor k_view = cache[1].narrow(1, 0, context).unsqueeze(0);
  at::Tensor k_contig = k_view.contiguous();
  at::Tensor norm_w = at::ones({h}, f16);
  at::Tensor table = at::randn({4096, d}, f16);
  const double scale = 1.0 / std::sqrt(128.0);
  double total = 0;
  total += time_ms("linear qkv [1,4096]x[12288,4096]", 200, [&] { at::linear(x, w_qkv); });
  total += time_ms("linear o [1,4096]x[4096,4096]", 200, [&] { at::linear(x, w_o); });
  total += time_ms("linear gate_up [1,4096]x[22016,4096]", 200, [&] { at::linear(x, w_gate_up); });
  total += time_ms("linear down [1,11008]x[4096,11008]", 200, [&] { at::linear(mid, w_down); });
  time_ms("lm_head [1,4096]x[32064,4096]", 100, [&] { at::linear(x, w_head); });
  // Our GEMV (llava::Linear, up to 8 rows) against cuBLAS on the gate/up shape.
  for (auto quantize : {llava::Quantize::kNone, llava::Quantize::kInt8}) {
    llava::Linear ours({w_gate_up}, {}, quantize);
    for (int64_t rows : {1, 2, 4, 8}) {
      at::Tensor xs = at::randn({rows, h}, f16);
      const std::string name = "gate_up " + std::to_string(rows) + " rows, ours (" + llava::to_string(quantize) + ")";
      time_ms(name.c_str(), 100, [&] { ours(xs); });
      if (quantize == llava::Quantize::kNone) {
        time_ms(("gate_up " + std::to_string(rows) + " rows, LibTorch (cuBLAS)").c_str(), 100, [&] { at::linear(xs, w_gate_up); });
      }
    }
  }
  total += time_ms("attention, strided cache view", 200,
                   [&] { llava::attention(q, k_view, k_view, at::Tensor(), scale); });
  time_ms("attention, contiguous k/v", 200, [&] { llava::attention(q, k_contig, k_contig, at::Tensor(), scale); });
  total += time_ms("rms_norm (float32 round trip)", 200, [&] {
    at::Tensor x32 = x.to(at::kFloat);
    norm_w * (x32 * at::rsqrt(x32.pow(2).mean(-1, true) + 1e-5)).to(x.scalar_type());
  });
  total += time_ms("rope rows + rotate (q)", 200, [&] {
    at::Tensor positions = at::arange(context, context + 1, at::TensorOptions().dtype(at::kLong).device(device));
    at::Tensor cos = table.index_select(0, positions).view({1, 1, 1, d});
    at::Tensor rotated = at::cat({-q.narrow(-1, d / 2, d / 2), q.narrow(-1, 0, d / 2)}, -1);
    q* cos + rotated * cos;
  });
  total += time_ms("kv write (narrow + copy_)", 200, [&] { cache[1].narrow(1, context, 1).copy_(q[0]); });
  time_ms("tiny add (dispatch overhead)", 1000, [&] { at::add(q, q); });
  time_ms("host -> device token id", 200, [&] { at::tensor({int64_t{5}}, at::kLong).to(device); });
  time_ms("argmax + item", 200, [&] { at::linear(x, w_head).argmax().item<int64_t>(); });
  std::printf("%-44s %10.4f ms\n", "one layer: linears + attention + norm + rope + kv", total);
  std::printf("weights read per layer: %.1f MB\n", (3 * h * h + h * h + 3 * h * inter) * 2 / 1e6);
  if (argc > 3) {
    llava::LlavaConfig config = llava::load_llava_config(argv[3]);
    llava::Checkpoint checkpoint(argv[3]);
    llava::WeightPlacement placement;
    const std::string quantize = argc > 4 ? argv[4] : "none";
    placement.quantize = quantize == "int8"   ? llava::Quantize::kInt8
                         : quantize == "int4" ? llava::Quantize::kInt4
                                              : llava::Quantize::kNone;
    llava::LlamaDecoder decoder(config, checkpoint, f16, placement);
    const char* profiled = std::getenv("LLAVA_PIPE_PROFILE");
    const bool profile_prefill = profiled != nullptr && std::string(profiled) == "prefill";
    llava::KvCache kv(config.text, 1, context + 64, f16);
    const int slot = kv.acquire();
    at::Tensor prompt = at::randint(3, config.text.vocab_size, {1, context}, at::TensorOptions().dtype(at::kLong).device(device));
    const at::Tensor prompt_embedded = decoder.embed(prompt);
    time_ms("real decoder: prompt forward (CONTEXT tokens)", 10, [&] {
      decoder.forward(prompt_embedded, kv, {slot});
      kv.set_length(slot, 0);
    });
    if (profile_prefill) llava::profile_range(true);
    decoder.forward(prompt_embedded, kv, {slot});
    llava::synchronize(device);
    if (profile_prefill) llava::profile_range(false);
    at::Tensor token = at::full({1, 1}, 5, at::TensorOptions().dtype(at::kLong).device(device));
    at::Tensor embedded = decoder.embed(token);
    time_ms("real decoder: embed", 50, [&] { decoder.embed(token); });
    time_ms("real decoder: forward, 1 token (32 layers)", 50, [&] {
      decoder.forward(embedded, kv, {slot});
      kv.set_length(slot, context);  // stay at the same position
    });
    at::Tensor hidden = decoder.forward(embedded, kv, {slot});
    kv.set_length(slot, context);
    time_ms("real decoder: logits + argmax + item", 50, [&] { decoder.logits(hidden).argmax().item<int64_t>(); });
    // The same step through the Generator (what the worker runs).
    for (int batch : {1, 8, 32}) {
      llava::Generator generator(decoder, batch, context + 200);
      std::vector<int32_t> ids(static_cast<size_t>(context), 5);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(3 + (i * 7919) % 30000 % config.text.vocab_size);
      llava::SamplingParams params;
      params.max_new_tokens = 190;
      for (int r = 0; r < batch; ++r) generator.start(static_cast<uint64_t>(r), ids, {}, params);
      const std::string name = "Generator::step, batch " + std::to_string(batch);
      time_ms(name.c_str(), 30, [&] { generator.step(); });
      llava::synchronize(device);
      if (!profile_prefill) llava::profile_range(true);
      generator.step();
      llava::synchronize(device);
      if (!profile_prefill) llava::profile_range(false);
    }
  }
  return 0;
}
