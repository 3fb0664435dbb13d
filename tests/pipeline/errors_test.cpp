// Requests and runs that end in an error, through real processes, each with its reason and
// without harm to the rest: cancelled, drained at stop, over the queue's capacity, too long,
// bad images; a checkpoint, worker program or port that cannot be used; a bad batch file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/transport.h"
#include "coordinator/coordinator.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

TEST(Pipeline, CancelledRequestGetsOneAnswerAndTheOthersGoOn) {
  FaultDelay delay(10);
  uint64_t cancelled = 0;
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t id, const std::string&) {
    if (cancelled == 0) {
      cancelled = id;
      EXPECT_TRUE(c.cancel(id));
      EXPECT_FALSE(c.cancel(id));  // already answered
    }
  };
  Outcome outcome = run_pipeline(write_config("cancel", kSequential), kCases, hooks);
  ASSERT_NE(cancelled, 0u);
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    const uint64_t id = outcome.ids[i];
    ASSERT_EQ(outcome.answers.at(id), 1) << i;
    const auto& r = outcome.results.at(id);
    if (id == cancelled) {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error, "cancelled by the client");
    } else {
      EXPECT_TRUE(r.ok) << r.error;
      EXPECT_EQ(r.tokens, outcome.expected[i]);
    }
  }
  expect_no_deaths(outcome);
}

TEST(Pipeline, StopDrainsWorkInFlightAndEndsTheRestExplicitly) {
  FaultDelay delay(100);
  Hooks hooks;
  hooks.on_lease_event = [&](llava::Coordinator&, const llava::LeaseEvent& e) {
    if (e.process == "vision-0" && e.what == "granted")
      llava::Coordinator::request_stop();  // as SIGTERM does
  };
  Outcome outcome = run_pipeline(write_config("drain", concurrent_cpu(1, 8)), kCases, hooks);
  int finished = 0, cut = 0;
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    ASSERT_EQ(outcome.answers.at(outcome.ids[i]), 1) << i;
    const auto& r = outcome.results.at(outcome.ids[i]);
    if (r.ok) {
      ++finished;
      EXPECT_EQ(r.tokens, outcome.expected[i]) << i;
    } else {
      ++cut;
      EXPECT_EQ(r.error, "cancelled: the pipeline is shutting down") << i;
      EXPECT_EQ(r.error_kind, llava::ErrorKind::kUnavailable) << i;
    }
  }
  EXPECT_GE(finished, 1);  // what the vision worker had when the stop came went through
  EXPECT_GE(cut, 1);       // what it had not been given ended at once
}

TEST(Pipeline, FullQueueRefusesNewRequestsExplicitly) {
  Outcome outcome =
      run_pipeline(write_config("overload", kSequential, "queue_capacity: 2"), kCases, {}, 2);
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    if (i < 2) {
      EXPECT_TRUE(r.ok) << r.error;
      EXPECT_EQ(r.tokens, outcome.expected[i]);
    } else {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(
          r.error.rfind("overloaded: 2 requests are waiting (coordinator.queue_capacity 2)", 0), 0u)
          << r.error;
      EXPECT_EQ(r.error_kind, llava::ErrorKind::kOverloaded);
    }
  }
}

// A prompt over the context fails alone; one whose text could not fit whatever its tokens
// (20 MiB for 256 tokens) is refused before the coordinator's thread tokenizes it.
TEST(Pipeline, PromptLongerThanTheContextFailsAlone) {
  std::vector<Case> cases = {
      kCases[0], {std::string(3000, 'x') + " why?", {}}, {std::string(20 << 20, 'x'), {}}};
  Outcome outcome = run_pipeline(write_config("long-prompt", kSequential), cases, {}, 1);
  EXPECT_TRUE(outcome.results.at(outcome.ids[0]).ok);
  EXPECT_EQ(outcome.results.at(outcome.ids[0]).tokens, outcome.expected[0]);
  const auto& r = outcome.results.at(outcome.ids[1]);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("the context holds 256"), std::string::npos) << r.error;
  EXPECT_EQ(r.error_kind, llava::ErrorKind::kBadRequest);
  const auto& huge = outcome.results.at(outcome.ids[2]);
  EXPECT_FALSE(huge.ok);
  EXPECT_NE(huge.error.find("over 64 for each of the context's 256 tokens (refused before "
                            "tokenizing)"),
            std::string::npos)
      << huge.error;
  EXPECT_EQ(huge.error_kind, llava::ErrorKind::kBadRequest);
}

TEST(Pipeline, CorruptAndMissingImagesFailAloneWithTheirReason) {
  const std::string corrupt = testing::TempDir() + "corrupt.jpg";
  std::ofstream(corrupt) << "\xff\xd8\xff\xe0 this is not really a JPEG";
  std::vector<Case> cases = kCases;
  cases.push_back({"Bad one.", {corrupt}});
  cases.push_back({"Missing one.", {kImages + "no-such-image.png"}});
  Outcome outcome = run_pipeline(write_config("bad-images", kSequential), cases, {}, kCases.size());
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.tokens, outcome.expected[i]);
  }
  const auto& bad = outcome.results.at(outcome.ids[kCases.size()]);
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.error.rfind("vision stage: image 1 of 1: ", 0), 0u) << bad.error;
  EXPECT_EQ(bad.error_kind, llava::ErrorKind::kBadRequest);  // the worker says whose fault it is
  const auto& missing = outcome.results.at(outcome.ids[kCases.size() + 1]);
  EXPECT_FALSE(missing.ok);
  EXPECT_NE(missing.error.find("cannot read image '"), std::string::npos) << missing.error;
  EXPECT_NE(missing.error.find("No such file or directory"), std::string::npos);
  EXPECT_EQ(missing.error_kind, llava::ErrorKind::kBadRequest);
}

TEST(Pipeline, CheckpointThatCannotLoadFailsTheRunWithTheLoaderMessage) {
  // tiny-llava's config with tiny-llava-b's weights: the projector's shapes differ.
  const std::string folder = testing::TempDir() + "mismatched-llava";
  std::system(("rm -rf " + folder + " && mkdir -p " + folder + " && cp " + kModel + "/*.json " +
               kModel + "/tokenizer.model " + folder + "/ && cp " + kSource +
               "/tests/data/tiny-llava-b/model.safetensors " + folder + "/")
                  .c_str());
  const std::string path = testing::TempDir() + "mismatched.yaml";
  std::ofstream(path)
      << "model: {checkpoint: " << folder << ", dtype: float32}\n"
      << kSequential
      << "coordinator: {endpoint: 'ipc://@llava-pipe-test-{pid}', heartbeat_interval: 100ms}\n";
  const std::string output =
      run_command(kBinary + "/llava-pipe run " + path + " --prompt hello --image " + kImages +
                  "img00_64x48_RGB.png 2>&1; echo exit=$?");
  EXPECT_NE(output.find("cannot load the vision stage"), std::string::npos) << output;
  EXPECT_NE(
      output.find("'multi_modal_projector.linear_1.weight' has shape [64, 64], expected [64, 32]"),
      std::string::npos)
      << output;
  EXPECT_NE(output.find("exit=1"), std::string::npos) << output;
}

TEST(Pipeline, AWorkerProgramThatCannotStartEndsTheRunWithItsPath) {
  llava::CoordinatorEvents events;
  int answers = 0;
  events.on_result = [&](const llava::RequestResult& r) {
    ++answers;
    EXPECT_NE(r.error.find("cannot start the worker program /nonexistent/llava-stage"),
              std::string::npos)
        << r.error;
  };
  llava::Coordinator coordinator(llava::load_config(write_config("no-program", kSequential)),
                                 events, "/nonexistent/llava-stage");
  llava::RequestSpec spec;
  spec.prompt = "hello";
  spec.generation.max_new_tokens = 2;
  coordinator.submit(spec);
  coordinator.run();  // returns: the failure is fatal, not restarted forever
  EXPECT_TRUE(coordinator.failed());
  EXPECT_EQ(answers, 1);
}

TEST(Pipeline, PortInUseFailsFastBeforeAnyWorkerStarts) {
  zmq::context_t context;
  zmq::socket_t squatter(context, zmq::socket_type::router);
  squatter.bind("tcp://127.0.0.1:*");
  const std::string endpoint = squatter.get(zmq::sockopt::last_endpoint);
  const std::string path = testing::TempDir() + "port-in-use.yaml";
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                      << kSequential << "coordinator: {endpoint: '" << endpoint << "'}\n";
  const std::string output = run_command(kBinary + "/llava-pipe run " + path +
                                         " --verbose --prompt hello 2>&1; echo exit=$?");
  EXPECT_NE(output.find("Address already in use"), std::string::npos) << output;
  EXPECT_EQ(output.find("started"), std::string::npos) << output;  // no worker was started
  EXPECT_NE(output.find("exit=1"), std::string::npos) << output;
}

TEST(Pipeline, BatchFileWithBadLinesAnswersEveryLineInOrder) {
  const std::string in = testing::TempDir() + "batch.jsonl";
  const std::string out = testing::TempDir() + "batch-out.jsonl";
  std::string many = "[";
  for (int i = 0; i < 17; ++i)
    many += std::string(i ? ", " : "") + "\"" + kImages + "img00_64x48_RGB.png\"";
  many += "]";
  std::ofstream(in) << R"({"id": "a", "image": ")" << kImages
                    << R"(img00_64x48_RGB.png", "prompt": "Describe."})"
                    << "\n"
                    << "{not json\n"
                    << R"({"id": "c", "prompt": "x", "colour": "red"})"
                    << "\n"
                    << R"({"id": "d", "images": )" << many << R"(, "prompt": "Too many."})"
                    << "\n"
                    << R"({"id": "e", "prompt": "Text only.", "max_new_tokens": 3})"
                    << "\n"
                    // A byte that is not UTF-8: its error quotes it (this line used to end the
                    // whole run with no output).
                    << "{\"id\": \"f\", \"prompt\": \"a\xff\"}\n";
  const std::string output =
      run_command(kBinary + "/llava-pipe run " + write_config("batch", kSequential) +
                  " --requests " + in + " --output " + out + " 2>&1; echo exit=$?");
  EXPECT_NE(output.find("exit=3"), std::string::npos) << output;  // some lines failed
  EXPECT_NE(output.find("4 of 6 requests failed"), std::string::npos) << output;
  std::ifstream lines(out);
  std::vector<std::string> got;
  for (std::string line; std::getline(lines, line);) got.push_back(line);
  ASSERT_EQ(got.size(), 6u) << output;
  EXPECT_NE(got[0].find(R"("id":"a","line":1,"ok":true)"), std::string::npos) << got[0];
  EXPECT_NE(got[1].find(in + ":2: not a valid request"), std::string::npos) << got[1];
  EXPECT_NE(got[2].find(in + ":3: unknown key 'colour'"), std::string::npos) << got[2];
  EXPECT_NE(got[3].find("17 images; at most 16 per request"), std::string::npos) << got[3];
  EXPECT_NE(got[4].find(R"("generated_tokens":3,"id":"e","line":5,"ok":true)"), std::string::npos)
      << got[4];
  EXPECT_NE(got[5].find(in + ":6: not a valid request"), std::string::npos) << got[5];
  EXPECT_NO_THROW(nlohmann::json::parse(got[5])) << got[5];
}

}  // namespace
}  // namespace llava::test
