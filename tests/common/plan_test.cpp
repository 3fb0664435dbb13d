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
      "stages: {vision: {devices: cuda:0}, language: {devices: cuda:0, batch_size: 1, "
      "max_context: 1024}}\n");
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
  EXPECT_NE(plan.problems[0].find("language-0 needs 13."), std::string::npos) << plan.problems[0];
  EXPECT_NE(plan.problems[0].find("but memory_limit is 8.00 GiB: "), std::string::npos);
  EXPECT_NE(plan.problems[0].find(" short"), std::string::npos);
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

}  // namespace
