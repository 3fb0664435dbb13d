#include "common/gpu_info.h"

#include <gtest/gtest.h>

#include <stdexcept>

using llava::GpuInfo;
using llava::WeightDType;

TEST(GpuInfo, ParsesNvidiaSmisLines) {
  const auto gpus = llava::parse_nvidia_smi("0, NVIDIA L4, 8.9, 23034 MiB\n1, Tesla T4, 7.5, 15360 MiB\n");
  ASSERT_EQ(gpus.size(), 2u);
  EXPECT_EQ(gpus[0].index, 0);
  EXPECT_EQ(gpus[0].name, "NVIDIA L4");
  EXPECT_EQ(gpus[0].major, 8);
  EXPECT_EQ(gpus[0].minor, 9);
  EXPECT_EQ(gpus[0].memory_bytes, 23034ull << 20);
  EXPECT_EQ(gpus[1].index, 1);
  EXPECT_EQ(gpus[1].name, "Tesla T4");
  EXPECT_EQ(gpus[1].major, 7);
  EXPECT_EQ(gpus[1].minor, 5);
}

TEST(GpuInfo, KeepsACommaInsideTheNameAndSkipsBlankLines) {
  const auto gpus = llava::parse_nvidia_smi("\r\n3, NVIDIA H200, rev 2, 9.0, 143771 MiB\r\n\n");
  ASSERT_EQ(gpus.size(), 1u);
  EXPECT_EQ(gpus[0].index, 3);
  EXPECT_EQ(gpus[0].name, "NVIDIA H200, rev 2");
  EXPECT_EQ(gpus[0].major, 9);
  EXPECT_EQ(gpus[0].minor, 0);
}

TEST(GpuInfo, ReadsNotAvailableFieldsAsUnknown) {
  const auto gpus = llava::parse_nvidia_smi("0, Some GPU, [N/A], [N/A]\n");
  ASSERT_EQ(gpus.size(), 1u);
  EXPECT_EQ(gpus[0].major, 0);
  EXPECT_EQ(gpus[0].memory_bytes, 0u);
  EXPECT_EQ(llava::describe(gpus[0]), "cuda:0: Some GPU, compute capability unknown, 0.0 GiB");
}

TEST(GpuInfo, NoOutputIsNoGpu) { EXPECT_TRUE(llava::parse_nvidia_smi("").empty()); }

TEST(GpuInfo, RejectsALineThatIsNotTheQuerysShapeNamingTheLineAndField) {
  auto message = [](const std::string& output) {
    try {
      llava::parse_nvidia_smi(output);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("0, NVIDIA L4, 8.9, 23034 MiB\nNo devices were found\n"),
            "nvidia-smi output line 2 ('No devices were found'): expected 4 fields: index, name, compute_cap, "
            "memory.total");
  EXPECT_EQ(message("x, NVIDIA L4, 8.9, 23034 MiB"),
            "nvidia-smi output line 1 ('x, NVIDIA L4, 8.9, 23034 MiB'): index 'x' is not a number");
  EXPECT_EQ(message("0, NVIDIA L4, 89, 23034 MiB"),
            "nvidia-smi output line 1 ('0, NVIDIA L4, 89, 23034 MiB'): compute capability '89' is not MAJOR.MINOR");
  EXPECT_EQ(message("0, NVIDIA L4, 8.9, 22 GiB"),
            "nvidia-smi output line 1 ('0, NVIDIA L4, 8.9, 22 GiB'): memory.total '22 GiB' is not 'N MiB'");
}

TEST(GpuInfo, DescribesAGpuAsCheckPrintsIt) {
  GpuInfo l4{0, "NVIDIA L4", 8, 9, 23034ull << 20};
  EXPECT_EQ(llava::describe(l4), "cuda:0: NVIDIA L4, compute capability 8.9, 22.5 GiB");
}

TEST(GpuInfo, CudaVisibleDevicesSelectsAndRenumbersInItsOrder) {
  const auto all = llava::parse_nvidia_smi("0, A, 8.0, 1024 MiB\n1, B, 8.6, 1024 MiB\n2, C, 9.0, 1024 MiB\n");
  EXPECT_EQ(llava::visible_gpus(all, nullptr).size(), 3u);
  const auto two = llava::visible_gpus(all, "2,0");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].name, "C");
  EXPECT_EQ(two[0].index, 0);
  EXPECT_EQ(two[1].name, "A");
  EXPECT_EQ(two[1].index, 1);
  // CUDA stops at the first index that names no GPU; "" and -1 hide them all.
  ASSERT_EQ(llava::visible_gpus(all, "1,7,2").size(), 1u);
  EXPECT_TRUE(llava::visible_gpus(all, "").empty());
  EXPECT_TRUE(llava::visible_gpus(all, "-1").empty());
  // UUIDs map through NVML, which check does not use: the list is left as it is.
  EXPECT_EQ(llava::visible_gpus(all, "GPU-8f6c1a2e-0000-0000-0000-000000000000").size(), 3u);
}

TEST(GpuInfo, BFloat16IsRefusedBelowComputeCapability8WithTheDtypeToUse) {
  EXPECT_EQ(llava::dtype_refusal(WeightDType::kBFloat16, "Tesla T4", 7, 5),
            "bfloat16 needs compute capability 8.0 or newer; this Tesla T4 is 7.5: use dtype: float16");
  EXPECT_EQ(llava::dtype_refusal(WeightDType::kBFloat16, "NVIDIA A100-SXM4-40GB", 8, 0), "");
  EXPECT_EQ(llava::dtype_refusal(WeightDType::kFloat16, "Tesla T4", 7, 5), "");
  EXPECT_EQ(llava::dtype_refusal(WeightDType::kFloat32, "Tesla T4", 7, 5), "");
}

TEST(GpuInfo, TheDefaultArchitecturesCoverEveryColabAndDataCentreGpu) {
  const std::string defaults = "75-real;80-real;86-real;89-real;90-real;90-virtual";
  for (auto [major, minor] : {std::pair{7, 5}, {8, 0}, {8, 6}, {8, 7}, {8, 9}, {9, 0}, {10, 0}, {12, 0}}) {
    EXPECT_EQ(llava::arch_refusal(defaults, "GPU", major, minor), "") << major << "." << minor;
  }
}

TEST(GpuInfo, SassRunsOnlyWithinItsMajorAndPtxOnNewerGpus) {
  EXPECT_EQ(llava::arch_refusal("86-real", "NVIDIA L4", 8, 9), "");
  EXPECT_NE(llava::arch_refusal("86-real", "NVIDIA H100", 9, 0), "");
  EXPECT_NE(llava::arch_refusal("89-real", "NVIDIA A10", 8, 6), "");
  EXPECT_EQ(llava::arch_refusal("75-virtual", "NVIDIA H200", 9, 0), "");
  EXPECT_EQ(llava::arch_refusal("80", "NVIDIA H200", 9, 0), "");  // a bare number is SASS and PTX
  for (const char* any : {"", "native", "all", "all-major"}) EXPECT_EQ(llava::arch_refusal(any, "Tesla T4", 7, 5), "");
}

TEST(GpuInfo, AGpuTheBuildHasNoCodeForIsRefusedWithTheRebuildToRun) {
  EXPECT_EQ(llava::arch_refusal("80-real;90-real;90-virtual", "Tesla T4", 7, 5),
            "this build's CUDA kernels have code for compute capability 8.0, 9.0 and PTX for 9.0 and newer "
            "(LLAVA_PIPE_CUDA_ARCHS=80-real;90-real;90-virtual); this Tesla T4 is 7.5: rebuild with "
            "-DLLAVA_PIPE_CUDA_ARCHS=75 (or native)");
}
