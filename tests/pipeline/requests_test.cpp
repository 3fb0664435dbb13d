// What requests ask of the pipeline, through real processes: images seen before or shared
// by requests submitted together are encoded once, bursts are one vision batch, embeddings
// spill past their memory bound, prompts place their images, stop strings end answers.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

#include "common/config.h"
#include "common/utf8.h"
#include "coordinator/coordinator.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

// A chat sends its image again every turn: an image seen before (the same bytes) skips the
// vision stage, its embeddings kept by the coordinator, and the answer is the same. In
// sequential mode the vision worker is not even given the device for the second round.
TEST(Pipeline, ImagesSeenBeforeSkipTheVisionStage) {
  const std::string path = write_config("cache", kSequential);
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  auto round = [&] {
    std::vector<uint64_t> ids;
    for (const auto& item : kCases) ids.push_back(coordinator.submit(spec_of(item, path)));
    coordinator.run();
    return ids;
  };
  const std::vector<uint64_t> first = round();
  const int vision_grants = count_events(coordinator.timeline(), "vision-0", "granted");
  EXPECT_GE(vision_grants, 1);
  const pid_t language = coordinator.pid_of("language-0");
  ASSERT_GT(language, 0);
  const size_t lease_events = coordinator.timeline().size();
  const std::vector<uint64_t> second = round();
  // Lazy leases: the language worker kept the device after the first round (nothing else
  // needed it), so the second round, its images all cached, needed no swap at all: not a
  // lease event in between, the same process.
  EXPECT_EQ(coordinator.timeline().size(), lease_events);
  EXPECT_EQ(coordinator.pid_of("language-0"), language);
  coordinator.shutdown_workers();
  EXPECT_EQ(count_events(coordinator.timeline(), "vision-0", "granted"), vision_grants);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& a = results.at(first[i]);
    const auto& b = results.at(second[i]);
    ASSERT_TRUE(a.ok && b.ok) << a.error << b.error;
    EXPECT_EQ(b.tokens, expected_tokens(coordinator, kCases[i])) << "request " << i;
    EXPECT_EQ(a.tokens, b.tokens) << "request " << i;
    EXPECT_EQ(a.cached_images, 0);
    EXPECT_EQ(b.cached_images, static_cast<int>(kCases[i].images.size())) << "request " << i;
  }
}

// Several questions about one image, submitted together: the image is encoded once, the
// other requests wait for its embeddings (cache) instead of encoding it again; every
// answer is exact. In both modes.
TEST(Pipeline, OneImageInRequestsSubmittedTogetherIsEncodedOnce) {
  const std::string concurrent = concurrent_cpu(4, 4);
  for (const std::string& body : {kSequential, concurrent}) {
    std::vector<Case> cases;
    for (const auto& item : kCases) cases.push_back({item.prompt, kCases[0].images});
    Outcome outcome = run_pipeline(write_config("twins", body), cases);
    expect_all_match(outcome);
    int encoded = 0, cached = 0;
    for (const auto& [id, r] : outcome.results) (r.cached_images == 0 ? encoded : cached) += 1;
    EXPECT_EQ(encoded, 1) << body;
    EXPECT_EQ(cached, static_cast<int>(cases.size()) - 1) << body;
  }
}

// Requests submitted together reach the vision worker as one burst, and it encodes them as
// one batch even when its messages arrive one at a time (the fault hook makes it work after
// each): the coordinator tells it how many tasks follow each one. Answers are exact.
TEST(Pipeline, RequestsSubmittedTogetherAreEncodedInOneVisionBatch) {
  const std::string body = concurrent_cpu(8, 4);
  Outcome outcome;
  {
    ScopedEnv one_at_a_time("LLAVA_PIPE_FAULT_ONE_MESSAGE_PER_STEP", "1");
    outcome = run_pipeline(write_config("burst", body), kCases);
  }
  expect_all_match(outcome);
  int images = 0;
  for (const auto& item : kCases) images += static_cast<int>(item.images.size());
  ASSERT_EQ(images, 5);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    EXPECT_EQ(r.vision_batch_images, kCases[i].images.empty() ? 0 : images) << "request " << i;
  }
}

TEST(Pipeline, EmbeddingsPastTheMemoryBoundAreSpilledAndReadBack) {
  const std::string spill = testing::TempDir() + "pipeline-spill";
  std::system(("mkdir -p " + spill).c_str());
  Outcome outcome = run_pipeline(
      write_config("spill", kSequential, "embedding_memory: 1KiB, spill_dir: " + spill), kCases);
  expect_all_match(outcome);
  EXPECT_TRUE(std::filesystem::is_empty(spill));  // every spill file removed
}

// A prompt may place its images itself, one <image> per image, as transformers' LLaVA
// prompts do: the answer is exact (embeddings spliced mid-prompt). A prompt whose
// placeholders do not match its images is refused at submission, naming both counts.
TEST(Pipeline, PromptThatPlacesItsImagesIsExactAndAMismatchIsRefusedAtOnce) {
  const std::vector<Case> cases = {
      {"Compare <image> with this one: <image>\nWhich is brighter?",
       {kImages + "img02_240x320_RGB.jpg", kImages + "img09_400x300_L.jpg"}},
      {"What is <image> and <image>?", {kImages + "img01_320x240_RGB.jpg"}},
  };
  Outcome outcome = run_pipeline(write_config("placed", kSequential), cases, {}, 1);
  const auto& placed = outcome.results.at(outcome.ids[0]);
  ASSERT_TRUE(placed.ok) << placed.error;
  EXPECT_EQ(placed.tokens, outcome.expected[0]);
  const auto& mismatched = outcome.results.at(outcome.ids[1]);
  EXPECT_FALSE(mismatched.ok);
  EXPECT_NE(mismatched.error.find("the prompt has 2 <image> placeholders for 1 image"),
            std::string::npos)
      << mismatched.error;
  EXPECT_EQ(mismatched.attempts, 1);
}

// A stop string ends the answer where it first appears: the text, streamed and final,
// ends just before it, the finish reason is "stop", and the language worker drops the
// request (its one KV slot then serves the next request, whose answer is exact).
TEST(Pipeline, StopStringEndsTheAnswerJustBeforeIt) {
  const std::string path = write_config("stop", concurrent_cpu(8, 1));
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, std::string> streamed;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  events.on_text = [&](uint64_t id, const std::string& text) { streamed[id] += text; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  auto submit = [&](const Case& item, const std::vector<std::string>& stop) {
    llava::RequestSpec spec = spec_of(item, path);
    spec.generation.stop = stop;
    return coordinator.submit(spec);
  };
  const uint64_t plain = submit(kCases[0], {});
  coordinator.run();
  const std::string full = results.at(plain).text;
  EXPECT_EQ(streamed[plain], full);  // every byte streamed, the last ones at the end too
  ASSERT_GE(full.size(), 8u) << full;
  const std::string stop = full.substr(full.size() / 2, 3);
  const std::string expected = full.substr(0, full.find(stop));
  const uint64_t stopped = submit(kCases[0], {"never in this text \x01", stop});
  const uint64_t next = submit(kCases[3], {});
  coordinator.run();
  coordinator.shutdown_workers();
  const auto& r = results.at(stopped);
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.finish, "stop");
  EXPECT_EQ(r.text, expected);
  EXPECT_EQ(streamed[stopped], expected);
  EXPECT_LE(r.tokens.size(), results.at(plain).tokens.size());
  EXPECT_EQ(results.at(next).tokens, expected_tokens(coordinator, kCases[3]));
}

// The presence and frequency penalties count the answer's tokens only, a resumed attempt's
// among them: with a language worker killed mid-answer, the resumed answer is the
// uninterrupted one (greedy, so a token counted wrong shows as another token), which is
// not the unpenalized one. (On this model the penalized answer leaves the plain one at its
// 8th token, for its 5th: killed after 5 streamed, the resumed attempt must count those.)
// Coordinator events that keep each result and, once `kill_next` is set, kill the language
// worker when a request has streamed 5 tokens (counted by their logprobs: ask for them).
struct KillAfterFiveTokens {
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, size_t> streamed;
  bool kill_next = false, killed = false;
  llava::Coordinator* coordinator = nullptr;  // set once made

  llava::CoordinatorEvents events() {
    llava::CoordinatorEvents e;
    e.on_result = [this](const llava::RequestResult& r) { results[r.id] = r; };
    e.on_text = [](uint64_t, const std::string&) {};  // logprobs stream with the text
    e.on_logprobs = [this](uint64_t id, const std::vector<llava::TokenLogprob>& logprobs) {
      streamed[id] += logprobs.size();
      if (kill_next && !killed && streamed[id] >= 5) {
        killed = true;
        kill(coordinator->pid_of("language-0"), SIGKILL);
      }
    };
    return e;
  }
};

TEST(Pipeline, APenalizedAnswerResumedAfterAWorkerDeathIsTheUninterruptedOne) {
  FaultDelay delay(20);
  const std::string path = write_config("penalties", concurrent_cpu(8, 2));
  KillAfterFiveTokens run;
  auto& [results, streamed, kill_next, killed, self] = run;
  llava::Coordinator coordinator(llava::load_config(path), run.events(), kBinary + "/llava-stage");
  self = &coordinator;
  auto submit = [&](double presence, double frequency) {
    llava::RequestSpec spec = spec_of(kCases[0], path);
    spec.generation.max_new_tokens = 16;
    spec.generation.ignore_eos = true;
    spec.generation.presence_penalty = presence;
    spec.generation.frequency_penalty = frequency;
    spec.generation.logprobs = 0;
    return coordinator.submit(spec);
  };
  const uint64_t plain = submit(0, 0), penalized = submit(0.5, -1.5);
  coordinator.run();
  kill_next = true;
  const uint64_t again = submit(0.5, -1.5);
  coordinator.run();
  coordinator.shutdown_workers();
  ASSERT_TRUE(killed);
  for (uint64_t id : {plain, penalized, again})
    ASSERT_TRUE(results.at(id).ok) << results.at(id).error;
  EXPECT_NE(results.at(penalized).tokens, results.at(plain).tokens);
  EXPECT_EQ(results.at(penalized).tokens.size(), 16u);
  EXPECT_GE(results.at(again).attempts, 2);
  EXPECT_EQ(results.at(again).tokens, results.at(penalized).tokens);
}

// JSON mode across a worker's death: the resumed attempt's constraint starts from the
// answer's tokens so far (inside the object's first key, here), so the answer is token for
// token the uninterrupted one; a fresh constraint would have asked for '{' again.
TEST(Pipeline, AJsonModeAnswerResumedAfterAWorkerDeathIsTheUninterruptedOne) {
  FaultDelay delay(20);
  const std::string path = write_config("json-mode", concurrent_cpu(8, 2));
  KillAfterFiveTokens run;
  auto& [results, streamed, kill_next, killed, self] = run;
  llava::Coordinator coordinator(llava::load_config(path), run.events(), kBinary + "/llava-stage");
  self = &coordinator;
  auto submit = [&](bool json) {
    llava::RequestSpec spec = spec_of(kCases[0], path);
    spec.generation.max_new_tokens = 24;
    spec.generation.temperature = 0.9;
    spec.generation.seed = 4;
    spec.generation.json_object = json;
    spec.generation.logprobs = 0;
    return coordinator.submit(spec);
  };
  const uint64_t free = submit(false), json = submit(true);
  coordinator.run();
  kill_next = true;
  const uint64_t again = submit(true);
  coordinator.run();
  coordinator.shutdown_workers();
  ASSERT_TRUE(killed);
  for (uint64_t id : {free, json, again}) ASSERT_TRUE(results.at(id).ok) << results.at(id).error;
  const std::string& text = results.at(json).text;
  const size_t start = text.find_first_not_of(" \t\r\n");
  ASSERT_NE(start, std::string::npos) << text;
  EXPECT_EQ(text[start], '{') << text;
  EXPECT_NE(results.at(json).tokens, results.at(free).tokens);
  EXPECT_GE(results.at(again).attempts, 2);
  EXPECT_EQ(results.at(again).tokens, results.at(json).tokens);
}

// A schema (response_format json_schema) on the tiny model: the answer starts with the one
// required key whatever the model prefers. A schema the worker cannot follow (a peer's: the
// API would have refused it) fails its own request only, naming what is wrong, and the
// worker goes on with the next.
TEST(Pipeline, AJsonSchemaAnswerFollowsItsSchemaAndABadSchemaFailsOnlyItsRequest) {
  const std::string path = write_config("json-schema", concurrent_cpu(8, 2));
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  auto submit = [&](const std::string& schema) {
    llava::RequestSpec spec = spec_of(kCases[0], path);
    spec.generation.max_new_tokens = 12;
    spec.generation.json_object = true;
    spec.generation.json_schema = schema;
    return coordinator.submit(spec);
  };
  const std::string good =
      R"({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]})";
  const uint64_t first = submit(good);
  const uint64_t bad =
      submit(R"({"type":"object","properties":{"a":{"type":"integer","multipleOf":2}}})");
  const uint64_t garbled = submit("{not json");
  const uint64_t after = submit(good);
  coordinator.run();
  coordinator.shutdown_workers();
  for (uint64_t id : {first, after}) {
    ASSERT_TRUE(results.at(id).ok) << results.at(id).error;
    const std::string& text = results.at(id).text;
    EXPECT_EQ(text.substr(text.find_first_not_of(" \t\r\n"), 5), R"({"n":)") << text;
  }
  EXPECT_EQ(results.at(after).tokens, results.at(first).tokens);
  EXPECT_FALSE(results.at(bad).ok);
  EXPECT_NE(
      results.at(bad).error.find("json_schema: 'multipleOf' is not supported (at #/properties/a)"),
      std::string::npos)
      << results.at(bad).error;
  EXPECT_FALSE(results.at(garbled).ok);
  EXPECT_NE(results.at(garbled).error.find("json_schema: not JSON"), std::string::npos)
      << results.at(garbled).error;
}

// A language worker is sent the token table with its first JSON task only. Here that task
// waits in the worker's queue (its batch of 1 is busy) and is cancelled there, never run;
// the worker kept the table as the task arrived, so the next JSON task, sent without one,
// is answered.
TEST(Pipeline, AJsonTaskCancelledInTheWorkersQueueLeavesItsTokenTableThere) {
  FaultDelay delay(20);
  const std::string path = write_config("json-cancelled", concurrent_cpu(8, 1));
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  llava::Coordinator* self = nullptr;
  uint64_t busy = 0, waiting = 0;
  bool cancelled = false;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  events.on_text = [&](uint64_t id, const std::string&) {
    if (id == busy && !cancelled) cancelled = self->cancel(waiting);
  };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  self = &coordinator;
  auto submit = [&](bool json, int tokens) {
    llava::RequestSpec spec = spec_of(kCases[0], path);
    spec.generation.max_new_tokens = tokens;
    spec.generation.ignore_eos = !json;
    spec.generation.json_object = json;
    return coordinator.submit(spec);
  };
  busy = submit(false, 16);
  waiting = submit(true, 8);
  const uint64_t next = submit(true, 12);
  coordinator.run();
  coordinator.shutdown_workers();
  ASSERT_TRUE(cancelled);
  EXPECT_FALSE(results.at(waiting).ok);
  EXPECT_EQ(results.at(waiting).error, "cancelled by the client");
  EXPECT_TRUE(results.at(waiting).tokens.empty());  // it never ran
  ASSERT_TRUE(results.at(busy).ok) << results.at(busy).error;
  ASSERT_TRUE(results.at(next).ok) << results.at(next).error;
  const std::string& text = results.at(next).text;
  const size_t start = text.find_first_not_of(" \t\r\n");
  ASSERT_NE(start, std::string::npos) << text;
  EXPECT_EQ(text[start], '{') << text;
}

// A request that asks for logprobs gets one per token, streamed with the text they make
// and all in its answer: the tokens' ids, their texts, the most likely alternatives. The
// answer itself is the same as without them, and a request beside it that asks for none
// gets none. A language worker killed mid-answer loses none: the resumed attempt's logprobs
// continue the streamed ones, as an uninterrupted run gives them.
TEST(Pipeline, LogprobsComeWithEachTokenStreamedAndInTheAnswerAcrossAWorkerDeath) {
  FaultDelay delay(20);
  const std::string path = write_config("logprobs", concurrent_cpu(8, 2));
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, std::string> streamed;
  std::map<uint64_t, std::vector<llava::TokenLogprob>> streamed_logprobs;
  bool kill_next = false, killed = false;
  llava::CoordinatorEvents events;
  llava::Coordinator* self = nullptr;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  events.on_logprobs = [&](uint64_t id, const std::vector<llava::TokenLogprob>& logprobs) {
    auto& all = streamed_logprobs[id];
    all.insert(all.end(), logprobs.begin(), logprobs.end());
  };
  events.on_text = [&](uint64_t id, const std::string& text) {
    streamed[id] += text;
    if (kill_next && !killed && streamed_logprobs[id].size() >= 3) {
      killed = true;
      kill(self->pid_of("language-0"), SIGKILL);
    }
  };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  self = &coordinator;
  auto submit = [&](const Case& item, int logprobs) {
    llava::RequestSpec spec = spec_of(item, path);
    spec.generation.logprobs = logprobs;
    return coordinator.submit(spec);
  };
  const uint64_t asked = submit(kCases[1], 3);
  const uint64_t plain = submit(kCases[0], -1);
  coordinator.run();
  kill_next = true;
  const uint64_t again = submit(kCases[1], 3);
  coordinator.run();
  coordinator.shutdown_workers();
  ASSERT_TRUE(killed);

  const auto& r = results.at(asked);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.tokens, expected_tokens(coordinator, kCases[1]));
  EXPECT_TRUE(results.at(plain).logprobs.empty());
  EXPECT_TRUE(streamed_logprobs[plain].empty());
  ASSERT_EQ(r.logprobs.size(), r.tokens.size());
  std::string joined;
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const auto& t = r.logprobs[i];
    EXPECT_EQ(t.id, r.tokens[i]) << i;
    EXPECT_EQ(t.text, coordinator.tokenizer().token_text(t.id)) << i;
    ASSERT_EQ(t.top.size(), 3u) << i;
    EXPECT_EQ(t.top[0].id, t.id) << i;  // greedy: the token is the most likely
    EXPECT_EQ(t.top[0].logprob, t.logprob) << i;
    EXPECT_LE(t.logprob, 0.0f) << i;
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob) << i;
    if (!coordinator.tokenizer().is_special(t.id)) joined += t.text;
  }
  // The tokens' texts make the answer (whose first space the decoder strips; a lone byte
  // of no character, which this random model makes, is U+FFFD there).
  joined = llava::utf8_lossy(joined);
  EXPECT_TRUE(joined == r.text || joined == " " + r.text) << joined << " | " << r.text;
  // Streamed: a prefix of the answer's, each with the text it made.
  ASSERT_LE(streamed_logprobs[asked].size(), r.logprobs.size());
  for (size_t i = 0; i < streamed_logprobs[asked].size(); ++i) {
    EXPECT_EQ(streamed_logprobs[asked][i].id, r.logprobs[i].id) << i;
  }

  const auto& resumed = results.at(again);
  ASSERT_TRUE(resumed.ok) << resumed.error;
  EXPECT_GE(resumed.attempts, 2);
  EXPECT_EQ(resumed.tokens, r.tokens);
  ASSERT_EQ(resumed.logprobs.size(), r.logprobs.size());
  for (size_t i = 0; i < r.logprobs.size(); ++i) {
    EXPECT_NEAR(resumed.logprobs[i].logprob, r.logprobs[i].logprob, 1e-4) << i;
    for (size_t j = 0; j < 3; ++j) {
      EXPECT_EQ(resumed.logprobs[i].top[j].id, r.logprobs[i].top[j].id) << i;
      EXPECT_NEAR(resumed.logprobs[i].top[j].logprob, r.logprobs[i].top[j].logprob, 1e-4) << i;
    }
  }
}

// A prompt given as token ids (/v1/completions) is answered as the text they encode: the
// same tokens, the same prompt length. Ids outside the vocabulary, or the image placeholder,
// fail that request alone, naming the id and its place.
TEST(Pipeline, APromptOfTokenIdsIsAnsweredAsTheTextTheyEncode) {
  const std::string path = write_config("ids", concurrent_cpu(8, 2));
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  const std::string text = "USER: Describe a red circle. ASSISTANT:";
  auto submit = [&](std::optional<std::vector<int32_t>> ids) {
    llava::RequestSpec spec;
    spec.generation = llava::load_config(path).generation;
    spec.generation.chat_template = "{prompt}";  // as /v1/completions sends its prompt
    spec.prompt = ids ? "" : text;
    spec.prompt_ids = std::move(ids);
    return coordinator.submit(spec);
  };
  const std::vector<int32_t> ids = coordinator.tokenizer().encode(text);
  const int32_t vocab = static_cast<int32_t>(coordinator.model().text.vocab_size);
  const int32_t image = static_cast<int32_t>(coordinator.model().image_token_index);
  const uint64_t as_text = submit(std::nullopt), as_ids = submit(ids);
  const uint64_t outside = submit(std::vector<int32_t>{ids[0], ids[1], vocab});
  const uint64_t placeholder = submit(std::vector<int32_t>{ids[0], image, ids[1]});
  const uint64_t empty = submit(std::vector<int32_t>{});
  coordinator.run();
  coordinator.shutdown_workers();
  const auto& a = results.at(as_text);
  const auto& b = results.at(as_ids);
  ASSERT_TRUE(a.ok && b.ok) << a.error << b.error;
  EXPECT_FALSE(a.tokens.empty());
  EXPECT_EQ(b.tokens, a.tokens);
  EXPECT_EQ(b.text, a.text);
  EXPECT_EQ(b.prompt_tokens, static_cast<int>(ids.size()));
  EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
  const std::pair<uint64_t, std::string> refused[] = {
      {outside, "the prompt's token id " + std::to_string(vocab) +
                    " (at 2) is outside the model's " + std::to_string(vocab) +
                    "-token vocabulary"},
      {placeholder, "the prompt's token id " + std::to_string(image) +
                        " (at 1) is the image placeholder; images come with a chat request"},
      {empty, "the prompt's token ids are empty"}};
  for (const auto& [id, why] : refused) {
    const auto& r = results.at(id);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error_kind, llava::ErrorKind::kBadRequest);
    EXPECT_NE(r.error.find(why), std::string::npos) << r.error;
  }
}

}  // namespace
}  // namespace llava::test
