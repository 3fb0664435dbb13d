// Batch files: lines read one at a time, ids checked, results written whole or not at all.
#include "launch/batch_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/errors.h"

namespace {

std::string temp(const std::string& name) {
  return testing::TempDir() + "batch-file-" + std::to_string(getpid()) + "-" + name;
}

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(BatchFile, LinesComeOneAtATimeWithTheirNumbers) {
  const std::string path = temp("in.jsonl");
  std::ofstream(path) << "{\"id\": 1, \"prompt\": \"a\"}\n\n  \n{\"prompt\": \"b\", \"image\": \"x.png\"}\nnot json\n";
  llava::BatchReader reader(path, {});
  auto first = reader.next();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->number, 1);
  EXPECT_EQ(first->id, 1);
  EXPECT_EQ(first->spec.prompt, "a");
  auto second = reader.next();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->number, 4);
  EXPECT_TRUE(second->id.is_null());
  ASSERT_EQ(second->spec.image_paths.size(), 1u);
  EXPECT_EQ(second->spec.image_paths[0], (std::filesystem::path(path).parent_path() / "x.png").string());
  auto third = reader.next();
  ASSERT_TRUE(third);
  EXPECT_EQ(third->error.rfind(path + ":5: ", 0), 0u) << third->error;
  EXPECT_FALSE(reader.next());
  EXPECT_EQ(llava::BatchReader::count_lines(path), 3u);
}

TEST(BatchFile, ARepeatedIdIsAnErrorNamingTheFirstLine) {
  const std::string path = temp("dup.jsonl");
  std::ofstream(path) << "{\"id\": \"x\", \"prompt\": \"a\"}\n{\"id\": 7, \"prompt\": \"b\"}\n{\"id\": \"x\", \"prompt\": \"c\"}\n";
  llava::BatchReader reader(path, {});
  EXPECT_TRUE(reader.next()->error.empty());
  EXPECT_TRUE(reader.next()->error.empty());
  EXPECT_EQ(reader.next()->error, path + ":3: id \"x\" is already used by line 1; give each line its own id");
}

TEST(BatchFile, ResultsAppearUnderTheirNameOnlyWhenComplete) {
  const std::string out = temp("out.jsonl");
  std::filesystem::remove(out);
  {
    llava::ResultFile file(out, temp("in-none.jsonl"));
    file.write_line("{\"id\": 1}");
    EXPECT_FALSE(std::filesystem::exists(out));
    EXPECT_EQ(read(out + ".partial"), "{\"id\": 1}\n");
    file.write_line("{\"id\": 2}");
    file.commit();
  }
  EXPECT_EQ(read(out), "{\"id\": 1}\n{\"id\": 2}\n");
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
}

// A line that asked for logprobs gets them in its result, a token each; others get none.
TEST(BatchFile, AResultCarriesLogprobsOnlyWhenItsLineAskedForThem) {
  llava::BatchLine line;
  line.number = 3;
  line.id = "q";
  llava::RequestResult r;
  r.ok = true;
  r.text = "Hi.";
  r.tokens = {15043, 29889};
  EXPECT_FALSE(llava::result_json(line, r).contains("logprobs"));
  r.logprobs = {{15043, " Hi", -0.5f, {}}, {29889, ".", -0.25f, {}}};
  const auto json = llava::result_json(line, r);
  ASSERT_EQ(json["logprobs"].size(), 2u);
  EXPECT_EQ(json["logprobs"][1]["text"], ".");
  EXPECT_EQ(json["logprobs"][1]["logprob"], -0.25);
}

TEST(BatchFile, TheRequestsFileIsNeverTheOutput) {
  const std::string path = temp("same.jsonl");
  std::ofstream(path) << "{\"prompt\": \"a\"}\n";
  EXPECT_THROW(llava::ResultFile(path, path), llava::ConfigError);
  EXPECT_EQ(read(path), "{\"prompt\": \"a\"}\n");
}

}  // namespace
