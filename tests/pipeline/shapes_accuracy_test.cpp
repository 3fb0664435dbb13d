// The accuracy gate: `llava-pipe run --requests` on the 240 held-out pictures of the trained
// shapes LLaVA (tests/data/shapes-eval), whole pipeline, answers compared exactly with the
// expected ones. float32 must be right in >= 95% of cases; int8 and int4 weight-only
// language stages may lose at most 1 and 3 points against it.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "in_process.h"

namespace {

using llava::test::kBinary;
using llava::test::kSource;
using llava::test::run_command;

const std::string kEval = kSource + "/tests/data/shapes-eval/";

struct Accuracy {
  int right = 0, total = 0;
  std::map<std::string, std::pair<int, int>> by_kind;  // right, total
  double overall() const { return total == 0 ? 0 : static_cast<double>(right) / total; }
};

Accuracy run_eval(const std::string& name, const std::string& quantize) {
  const std::string config = testing::TempDir() + "shapes-" + name + ".yaml";
  const std::string output = testing::TempDir() + "shapes-" + name + ".jsonl";
  std::ofstream(config) << "mode: sequential\n"
                        << "model: {checkpoint: " << kSource << "/tests/data/shapes-llava, dtype: float32}\n"
                        << "stages:\n"
                        << "  vision: {devices: cpu, batch_size: 16}\n"
                        << "  language: {devices: cpu, batch_size: 16, max_context: 128, quantize: " << quantize
                        << "}\n"
                        << "coordinator: {endpoint: 'ipc://@llava-shapes-" << name << "-{pid}'}\n"
                        << "generation: {max_new_tokens: 16, temperature: 0}\n";
  const std::string log = run_command(kBinary + "/llava-pipe run " + config + " --requests " + kEval +
                                      "requests.jsonl --output " + output + " 2>&1; echo exit=$?");
  EXPECT_NE(log.find("exit=0"), std::string::npos) << log;
  std::map<std::string, nlohmann::json> expected;
  std::ifstream answers(kEval + "answers.jsonl");
  for (std::string line; std::getline(answers, line);) {
    auto j = nlohmann::json::parse(line);
    expected[j["id"]] = j;
  }
  Accuracy a;
  std::ifstream results(output);
  for (std::string line; std::getline(results, line);) {
    auto r = nlohmann::json::parse(line);
    const auto& want = expected.at(r["id"].get<std::string>());
    const bool right = r["ok"].get<bool>() && r["text"] == want["expected"];
    auto& kind = a.by_kind[want["kind"]];
    kind.first += right, ++kind.second;
    a.right += right, ++a.total;
  }
  EXPECT_EQ(a.total, static_cast<int>(expected.size())) << name;
  std::printf("shapes %-8s %d/%d right (%.2f%%):", name.c_str(), a.right, a.total, 100 * a.overall());
  for (const auto& [kind, n] : a.by_kind) std::printf(" %s %d/%d", kind.c_str(), n.first, n.second);
  std::printf("\n");
  return a;
}

TEST(ShapesAccuracy, ThePipelineAnswersHeldOutPicturesRightAndQuantizationKeepsIt) {
  const Accuracy f32 = run_eval("float32", "none");
  ASSERT_GE(f32.total, 200);
  EXPECT_GE(f32.overall(), 0.95);
  RecordProperty("float32_right", std::to_string(f32.right) + "/" + std::to_string(f32.total));
  const Accuracy int8 = run_eval("int8", "int8");
  EXPECT_GE(int8.overall(), f32.overall() - 0.01);
  RecordProperty("int8_right", std::to_string(int8.right) + "/" + std::to_string(int8.total));
  const Accuracy int4 = run_eval("int4", "int4");
  EXPECT_GE(int4.overall(), f32.overall() - 0.03);
  RecordProperty("int4_right", std::to_string(int4.right) + "/" + std::to_string(int4.total));
}

}  // namespace
