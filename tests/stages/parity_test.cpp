// Our forward pass against transformers' LlavaForConditionalGeneration (float64 on the
// CPU, tests/data/make_tiny_llava.py) on the same checkpoints.
#include <gtest/gtest.h>

#include "tests/stages/tiny_model.h"

namespace {

using llava::test::data_path;
using llava::test::ids_of;
using llava::test::load_json;
using llava::test::load_tensors;
using llava::test::load_tensors_at;
using llava::test::relative_error;
using llava::test::TinyModel;

constexpr double kLogitTolerance = 1e-4;  // max |ours - theirs| / max |theirs|, float32

using llava::test::check_reference_cases;

TEST(Parity, TinyLlavaMatchesTransformers) { check_reference_cases("tiny-llava", "reference", "a"); }

// "full" feature strategy, two concatenated feature layers, tied embeddings, linear RoPE.
TEST(Parity, TinyLlavaVariantMatchesTransformers) { check_reference_cases("tiny-llava-b", "reference", "b"); }

TEST(Parity, HubShardedLayoutGivesIdenticalLogits) {
  TinyModel v5(data_path("tiny-llava")), hub(data_path("tiny-llava-layouts/hub-sharded"));
  auto ref = load_tensors("reference/a_case0.safetensors");
  auto ids = ids_of(ref["input_ids"]);
  llava::KvCache c1(v5.config.text, 1, 256, v5.options), c2(hub.config.text, 1, 256, hub.options);
  EXPECT_TRUE(at::equal(v5.prompt_logits(ids, ref["pixel_values"], c1, c1.acquire()),
                        hub.prompt_logits(ids, ref["pixel_values"], c2, c2.acquire())));
}

TEST(Parity, Float16LayoutMatchesTransformersOnTheSameWeights) {
  TinyModel v452(data_path("tiny-llava-layouts/v452-f16"));  // computed in float32
  auto ref = load_tensors("reference/a_f16weights_case0.safetensors");
  auto ids = ids_of(ref["input_ids"]);
  llava::KvCache cache(v452.config.text, 1, 256, v452.options);
  EXPECT_LT(relative_error(v452.prompt_logits(ids, ref["pixel_values"], cache, cache.acquire()),
                           ref["logits"]),
            kLogitTolerance);
}

}  // namespace

namespace {

// The tool that tests/gpu/check_7b.py runs on the GPU machine, here on the tiny model.
TEST(Parity, LogitsToolReproducesTheReference) {
  auto ref = load_tensors("reference/a_case0.safetensors");
  const std::string in = testing::TempDir() + "tool_in.safetensors";
  const std::string out = testing::TempDir() + "tool_out.safetensors";
  llava::save_safetensors(in, {{"input_ids.0", ref["input_ids"]}, {"pixel_values.0", ref["pixel_values"]}});
  const std::string command = std::string(LLAVA_PIPE_BINARY_DIR) + "/tests/llava_logits " +
                              data_path("tiny-llava") + " cpu float32 " + in + " " + out +
                              " > /dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0);
  auto result = load_tensors_at(out);
  EXPECT_LT(relative_error(result["logits.0"], ref["logits"]), 1e-4);
  auto greedy = ids_of(result["greedy.0"]);
  auto expected = ids_of(ref["greedy"]);
  EXPECT_EQ(greedy, std::vector<int32_t>(expected.begin(), expected.begin() + 8));
}

}  // namespace
