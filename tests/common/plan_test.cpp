#include "common/plan.h"

#include <gtest/gtest.h>

namespace {

const std::string kHub7b =
    std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/hub-configs/llava-1.5-7b-hf";

llava::PipelineConfig config_of(const std::string& yaml) {
  return llava::parse_config("model: {checkpoint: " + kHub7b + "}\n" + yaml, "t.yaml", true);
}

TEST(Plan, SequentialPeakIsTheLargerStage) {
  auto config = config_of(
      "mode: sequential\n"
      "stages: {vision: {devices: cuda:0, release: exit}, language: {devices: cuda:0, batch_size: 1, "
      "max_context: 1024, release: exit}}\n");
  auto model = llava::load_llava_config(kHub7b);
  auto plan = llava::make_plan(config, model);
  ASSERT_EQ(plan.devices.size(), 1u);
  uint64_t vision = plan.processes[0].memory.total(), language = plan.processes[1].memory.total();
  EXPECT_EQ(plan.devices[0].predicted_peak, std::max(vision, language));
  // fp16 weights of the language model: 6.74e9 * 2 bytes.
  EXPECT_EQ(plan.processes[1].memory.weights, 6'738'939'904ull * 2);
  EXPECT_EQ(plan.processes[1].memory.kv_cache, 1024ull * 524288);
  EXPECT_TRUE(plan.problems.empty());
}

TEST(Plan, ConcurrentProcessesOnOneDeviceAddUp) {
  auto config = config_of(
      "mode: concurrent\nshare_devices: true\n"
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, batch_size: 1, "
      "max_context: 1024}}\n");
  auto plan = llava::make_plan(config, llava::load_llava_config(kHub7b));
  ASSERT_EQ(plan.devices.size(), 1u);
  EXPECT_EQ(plan.devices[0].predicted_peak,
            plan.processes[0].memory.total() + plan.processes[1].memory.total());
}

TEST(Plan, ReplicasGoRoundRobinOverDevices) {
  auto config = config_of(
      "mode: concurrent\nstages: {vision: {replicas: 2, devices: [cuda:0, cuda:1]}, "
      "language: {replicas: 2, devices: [cuda:2, cuda:3]}}\n");
  auto plan = llava::make_plan(config, llava::load_llava_config(kHub7b));
  ASSERT_EQ(plan.processes.size(), 4u);
  EXPECT_EQ(plan.processes[1].name, "vision-1");
  EXPECT_EQ(plan.processes[1].device, "cuda:1");
  EXPECT_EQ(plan.processes[3].device, "cuda:3");
  EXPECT_EQ(plan.devices.size(), 4u);
}

TEST(Plan, RefusesAStageOverItsLimitSayingByHowMuch) {
  auto config = config_of(
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, memory_limit: 8GiB, "
      "max_context: 1024, batch_size: 1}}\n");
  auto plan = llava::make_plan(config, llava::load_llava_config(kHub7b));
  ASSERT_EQ(plan.problems.size(), 1u);
  EXPECT_NE(plan.problems[0].find("language-0 needs 14.44 GiB"), std::string::npos) << plan.problems[0];
  EXPECT_NE(plan.problems[0].find("but memory_limit is 8.00 GiB: "), std::string::npos);
  EXPECT_NE(plan.problems[0].find("6.44 GiB short"), std::string::npos);
}

TEST(Plan, RefusesADeviceOverItsCapacity) {
  auto config = config_of(
      "device_memory: {cuda:0: 16GiB}\n"
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, batch_size: 8, "
      "max_context: 2048}}\n");
  auto plan = llava::make_plan(config, llava::load_llava_config(kHub7b));
  ASSERT_EQ(plan.problems.size(), 1u);
  EXPECT_EQ(plan.problems[0].rfind("cuda:0 would need ", 0), 0u) << plan.problems[0];
}

// Weight-only quantization: int8 is one byte per weight plus a float16 scale per output;
// int4 half a byte plus a scale per 128 inputs. The output layer is int8 in both; the
// token table moves to host memory.
TEST(Plan, QuantizedWeightsAreCountedAsStored) {
  auto model = llava::load_llava_config(kHub7b);
  const std::string stages =
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, memory_limit: 8GiB, "
      "batch_size: 1, max_context: 704, quantize: ";
  auto int8 = llava::language_layout(config_of(stages + "int8}}\n"), model);
  // q,k,v,o: 4 x 4096^2 (+4 x 4096 scales); gate, up, down: 3 x 4096 x 11008 (+ scales).
  const uint64_t layer8 = 4ull * 4096 * 4096 + 4 * 4096 * 2 + 3ull * 4096 * 11008 +
                          (2 * 11008 + 4096) * 2 + 2 * 4096 * 2;
  EXPECT_EQ(int8.layer_bytes, layer8);
  EXPECT_TRUE(int8.embeddings_on_host);
  EXPECT_EQ(int8.host_bytes, 32064ull * 4096 * 2);
  EXPECT_EQ(int8.head_bytes, 4096ull * 2 + 32064ull * 4096 + 32064 * 2);
  auto int4 = llava::language_layout(config_of(stages + "int4}}\n"), model);
  const uint64_t layer4 = 4ull * 4096 * 4096 / 2 + 4 * 4096 * 32 * 2 + 3ull * 4096 * 11008 / 2 +
                          (2 * 11008 * 32 + 4096 * 86) * 2 + 2 * 4096 * 2;
  EXPECT_EQ(int4.layer_bytes, layer4);
  EXPECT_EQ(int4.head_bytes, int8.head_bytes);
  for (const char* q : {"int8", "int4"}) {
    auto plan = llava::make_plan(config_of(stages + q + "}}\n"), model);
    EXPECT_TRUE(plan.problems.empty()) << q << ": " << plan.problems.front();
    EXPECT_LT(plan.processes[1].memory.total(), 8ull << 30);
  }
}

// With offload: layers and a limit, as many layers stay as fit beside two streaming
// buffers: one more would not fit.
TEST(Plan, OffloadKeepsAsManyLayersAsTheLimitAllows) {
  auto model = llava::load_llava_config(kHub7b);
  auto config = config_of(
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, memory_limit: 8GiB, "
      "batch_size: 1, max_context: 1024, offload: layers}}\n");
  auto layout = llava::language_layout(config, model);
  EXPECT_GT(layout.resident_layers, 0);
  EXPECT_GT(layout.streamed_layers, 0);
  EXPECT_EQ(layout.resident_layers + layout.streamed_layers, 32);
  auto plan = llava::make_plan(config, model);
  EXPECT_TRUE(plan.problems.empty());
  const uint64_t total = plan.processes[1].memory.total();
  EXPECT_LE(total, 8ull << 30);
  EXPECT_GT(total + layout.layer_bytes, 8ull << 30);
  EXPECT_EQ(layout.host_bytes, 32064ull * 4096 * 2 + layout.streamed_layers * layout.layer_bytes);
  EXPECT_NE(llava::describe(plan, config, model).find(std::to_string(layout.streamed_layers) +
                                                      " streamed from host through 2 buffers"),
            std::string::npos);
}

TEST(Plan, OffloadWithoutALimitStreamsEveryLayerAndWithRoomStreamsNone) {
  auto model = llava::load_llava_config(kHub7b);
  auto none = llava::language_layout(
      config_of("stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, offload: layers}}\n"),
      model);
  EXPECT_EQ(none.resident_layers, 0);
  EXPECT_EQ(none.streamed_layers, 32);
  auto room = llava::language_layout(
      config_of("stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, offload: layers, "
                "memory_limit: 40GiB, max_context: 1024}}\n"),
      model);
  EXPECT_EQ(room.resident_layers, 32);
  EXPECT_EQ(room.streamed_layers, 0);
  EXPECT_EQ(room.device_weight_bytes(), room.head_bytes + 32 * room.layer_bytes);
}

TEST(Plan, OffloadThatCannotFitEvenOneLayerIsRefused) {
  auto model = llava::load_llava_config(kHub7b);
  auto plan = llava::make_plan(
      config_of("stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, offload: layers, "
                "memory_limit: 1GiB, max_context: 1024}}\n"),
      model);
  ASSERT_EQ(plan.problems.size(), 1u);
  EXPECT_NE(plan.problems[0].find("but memory_limit is 1.00 GiB"), std::string::npos) << plan.problems[0];
}

// mode: auto's three outcomes on one cuda:0 (the 7B shape, float16, language batch 12 x
// 1024 tokens as configs/colab-l4.yaml has it), each from the same predictions as the plan.
llava::PipelineConfig auto_config(const std::string& capacity) {
  return config_of("mode: auto\n"
                   "stages: {vision: {devices: cuda:0, batch_size: 32}, language: {devices: cuda:0, "
                   "batch_size: 12, max_context: 1024}}\n" +
                   (capacity.empty() ? std::string() : "device_memory: {cuda:0: " + capacity + "}\n"));
}

TEST(AutoMode, BothStagesFittingTogetherRunConcurrentlyEachWithItsShare) {
  const auto model = llava::load_llava_config(kHub7b);
  std::string decision;
  const auto c = llava::resolve_mode(auto_config("80GiB"), model, &decision);
  EXPECT_EQ(c.mode, llava::Mode::kConcurrent);
  EXPECT_TRUE(c.share_devices);
  EXPECT_EQ(c.language.batch_size, 12);
  EXPECT_EQ(decision.rfind("mode auto: concurrent on cuda:0", 0), 0u) << decision;
  // The limits split the device: each stage its prediction plus half the room left.
  EXPECT_LE(c.vision.memory_limit + c.language.memory_limit, 80ull << 30);
  EXPECT_GE(c.vision.memory_limit + c.language.memory_limit, (80ull << 30) - 1);
  const auto plan = llava::make_plan(auto_config("80GiB"), model);
  EXPECT_EQ(plan.mode, llava::Mode::kConcurrent);
  EXPECT_TRUE(plan.problems.empty());
  EXPECT_NE(llava::describe(plan, auto_config("80GiB"), model).find(decision), std::string::npos);
}

TEST(AutoMode, ATightDeviceRunsConcurrentlyWithAShorterBatchNoLowerThanMinBatch) {
  const auto model = llava::load_llava_config(kHub7b);
  std::string decision;
  const auto c = llava::resolve_mode(auto_config("22GiB"), model, &decision);
  EXPECT_EQ(c.mode, llava::Mode::kConcurrent);
  EXPECT_LT(c.language.batch_size, 12);
  EXPECT_GE(c.language.batch_size, 4);
  EXPECT_NE(decision.find("the language batch cut from 12 to " + std::to_string(c.language.batch_size)),
            std::string::npos)
      << decision;
  // One sequence more would not have fitted: the largest batch that does was taken.
  auto bigger = c;
  ++bigger.language.batch_size;
  bigger.vision.memory_limit = bigger.language.memory_limit = 0;
  const auto plan = llava::make_plan(bigger, model);
  EXPECT_GT(plan.devices.at(0).predicted_peak, 22ull << 30);
}

TEST(AutoMode, TooSmallOrUnknownDevicesRunSequentially) {
  const auto model = llava::load_llava_config(kHub7b);
  std::string decision;
  EXPECT_EQ(llava::resolve_mode(auto_config("16GiB"), model, &decision).mode, llava::Mode::kSequential);
  EXPECT_NE(decision.find("even with a language batch of 4; cuda:0 has 16.00 GiB"), std::string::npos) << decision;
  EXPECT_EQ(llava::resolve_mode(auto_config(""), model, &decision).mode, llava::Mode::kSequential);
  EXPECT_NE(decision.find("device_memory.cuda:0 is not set"), std::string::npos) << decision;
}

// release: auto, on configs/colab-l4.yaml's shape (7B float16 on one 22 GiB device).
llava::PipelineConfig sequential_config(const std::string& releases = "") {
  return config_of("mode: sequential\n"
                   "stages: {vision: {devices: cuda:0" + releases + "}, language: {devices: cuda:0, "
                   "batch_size: 12, max_context: 1024}}\n");
}

constexpr uint64_t kGiB = 1ull << 30;

TEST(ReleaseAuto, OffloadsBothStagesWhenTheHostHasRoomForTheirWeights) {
  const auto model = llava::load_llava_config(kHub7b);
  std::string decision;
  const auto c = llava::resolve_release(sequential_config(), model, 64 * kGiB, &decision);
  EXPECT_EQ(c.vision.release, llava::Release::kOffload);
  EXPECT_EQ(c.language.release, llava::Release::kOffload);
  // The language stage's weights as they sit on the device: 6.74e9 parameters in float16.
  EXPECT_EQ(llava::offload_bytes(c, model, "language"), 6'738'939'904ull * 2);
  EXPECT_NE(decision.find("language offloads (12.55 GiB of weights kept in pinned host memory)"),
            std::string::npos)
      << decision;
}

TEST(ReleaseAuto, ATightHostOffloadsTheSmallerStageAndTheLargerExits) {
  const auto model = llava::load_llava_config(kHub7b);
  std::string decision;
  const auto c = llava::resolve_release(sequential_config(), model, 8 * kGiB, &decision);
  EXPECT_EQ(c.vision.release, llava::Release::kOffload);
  EXPECT_EQ(c.language.release, llava::Release::kExit);
  EXPECT_NE(decision.find("language exits (its 12.55 GiB of weights do not fit"), std::string::npos) << decision;
  const auto none = llava::resolve_release(sequential_config(), model, 3 * kGiB, &decision);
  EXPECT_EQ(none.vision.release, llava::Release::kExit);
  EXPECT_EQ(none.language.release, llava::Release::kExit);
}

TEST(ReleaseAuto, QuantizedWeightsTakeTheirStoredSizeInHostMemory) {
  const auto model = llava::load_llava_config(kHub7b);
  auto config = sequential_config();
  config.language.quantize = llava::Quantize::kInt8;
  const uint64_t bytes = llava::offload_bytes(config, model, "language");
  EXPECT_EQ(bytes, llava::language_layout(config, model).device_weight_bytes());
  EXPECT_LT(bytes, 7 * kGiB);
  // 12 GiB of host (a T4 Colab's): the float16 weights do not fit, int8 ones do.
  std::string decision;
  EXPECT_EQ(llava::resolve_release(sequential_config(), model, 12 * kGiB, &decision).language.release,
            llava::Release::kExit);
  EXPECT_EQ(llava::resolve_release(config, model, 12 * kGiB, &decision).language.release,
            llava::Release::kOffload);
}

TEST(ReleaseAuto, ExplicitChoicesStayAndAnExplicitOffloadTakesItsShareFirst) {
  const auto model = llava::load_llava_config(kHub7b);
  auto config = sequential_config(", release: exit");
  config.language.release = llava::Release::kOffload;
  std::string decision;
  const auto c = llava::resolve_release(config, model, 64 * kGiB, &decision);
  EXPECT_EQ(c.vision.release, llava::Release::kExit);
  EXPECT_EQ(c.language.release, llava::Release::kOffload);
  EXPECT_TRUE(decision.empty()) << decision;
  // Vision auto, language offload explicitly, and room for the language stage only.
  config.vision.release = llava::Release::kAuto;
  const uint64_t language = llava::offload_bytes(config, model, "language");
  const uint64_t kept = config.coordinator.embedding_memory + config.coordinator.embedding_cache +
                        config.coordinator.shared_memory + llava::kHostReserveBytes;
  const auto tight = llava::resolve_release(config, model, language + kept + (64ull << 20), &decision);
  EXPECT_EQ(tight.vision.release, llava::Release::kExit);
}

TEST(ReleaseAuto, OnTheCpuTheWeightsStayWhereTheyAre) {
  const auto model = llava::load_llava_config(kHub7b);
  auto config = config_of("mode: sequential\nstages: {vision: {devices: cpu}, language: {devices: cpu}}\n");
  std::string decision;
  const auto c = llava::resolve_release(config, model, 1 * kGiB, &decision);
  EXPECT_EQ(c.vision.release, llava::Release::kOffload);
  EXPECT_EQ(c.language.release, llava::Release::kOffload);
}

// A stage that offloads or unloads keeps its process, and so its CUDA context, through
// the other stage's turn: the device's peak counts it.
TEST(Plan, AStageThatKeepsItsProcessKeepsItsCudaContextInTheOtherTurn) {
  const auto model = llava::load_llava_config(kHub7b);
  auto config = sequential_config();
  config.vision.release = llava::Release::kOffload;
  config.language.release = llava::Release::kExit;
  const auto plan = llava::make_plan(config, model);
  const uint64_t vision = plan.processes[0].memory.total(), language = plan.processes[1].memory.total();
  EXPECT_EQ(plan.devices[0].predicted_peak, std::max(vision, language + llava::kCudaRuntimeBytes));
  EXPECT_NE(plan.processes[0].holds.find("offloads its weights to pinned host memory"), std::string::npos);
  EXPECT_NE(plan.processes[1].holds.find("then exits"), std::string::npos);
}

}  // namespace
