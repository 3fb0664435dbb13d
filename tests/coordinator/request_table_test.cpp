// The request table: ids, stale attempts, requeues, drains and the results requests end
// with, on a hand-set clock.
#include "coordinator/request_table.h"

#include <gtest/gtest.h>

#include "tests/coordinator/fake_workers.h"

namespace {

using namespace llava;
using std::chrono::milliseconds;

// The suite's fixture, named for the suite (the tests read "RequestTable.…").
class RequestTable : public ::testing::Test {
 protected:
  testing_fakes::FakeClock clock;
  EmbeddingStore store{1 << 20, ::testing::TempDir()};
  std::vector<RequestResult> results;
  std::vector<std::string> texts;
  llava::RequestTable table{store, clock.fn(),
                            [this](uint64_t, const std::string& text) { texts.push_back(text); },
                            [this](const RequestResult& result) { results.push_back(result); }};

  Request& add(std::vector<std::string> images = {"image-a"}) {
    RequestSpec spec;
    spec.client_id = "client-7";
    Request& r = table.add(spec);
    r.images = std::move(images);
    r.prompt = {1, 2, 3};
    r.progress = r.images.empty() ? Progress::kNeedLanguage : Progress::kNeedVision;
    return r;
  }
};

TEST_F(RequestTable, RequestsGetIncreasingIdsAndTheirSubmissionTime) {
  const uint64_t first = add().id;
  clock.advance(milliseconds(5));
  Request& second = add();
  EXPECT_EQ(second.id, first + 1);
  EXPECT_EQ(second.submitted, clock.now);
  EXPECT_EQ(table.size(), 2u);
}

TEST_F(RequestTable, AReplyOfAnEarlierAttemptFindsNothing) {
  Request& r = add();
  r.progress = Progress::kInVision;
  ASSERT_TRUE(table.requeue(r, "vision-0 killed by signal 9"));
  EXPECT_EQ(table.find(r.id, 0), nullptr);
  EXPECT_EQ(table.find(r.id, 1), &r);
  EXPECT_EQ(table.find(r.id + 1, 0), nullptr);
}

TEST_F(RequestTable, ARequeuedRequestWaitsForTheStageItWasIn) {
  Request& vision = add();
  vision.progress = Progress::kInVision;
  vision.worker = 0;
  Request& language = add({});
  language.progress = Progress::kInLanguage;
  language.worker = 1;
  table.requeue(vision, "gone");
  table.requeue(language, "gone");
  EXPECT_EQ(vision.progress, Progress::kNeedVision);
  EXPECT_EQ(language.progress, Progress::kNeedLanguage);
  EXPECT_EQ(vision.worker, -1);
  EXPECT_EQ(language.attempt, 1u);
}

TEST_F(RequestTable, ARequestIsGivenUpAfterMaxRequeues) {
  Request& r = add();
  for (int i = 0; i < kMaxRequeues; ++i) ASSERT_TRUE(table.requeue(r, "vision-0 died"));
  EXPECT_FALSE(table.requeue(r, "vision-0 killed by signal 9"));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_EQ(results[0].error_kind, ErrorKind::kUnavailable);
  EXPECT_EQ(results[0].error, "gave up after 3 retries; last: vision-0 killed by signal 9");
  EXPECT_EQ(results[0].attempts, kMaxRequeues + 1);
  EXPECT_TRUE(table.empty());
}

// Retries that are nobody's failure (embeddings sent again as bytes, not through shared
// memory) take a new attempt but do not count toward giving up.
TEST_F(RequestTable, RetriesThatAreNobodysFailureDoNotCountTowardGivingUp) {
  Request& r = add();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(table.requeue(r, "language-0: shared memory", false));
  EXPECT_EQ(r.attempt, 10u);
  for (int i = 0; i < kMaxRequeues; ++i) ASSERT_TRUE(table.requeue(r, "language-0 died"));
  EXPECT_FALSE(table.requeue(r, "language-0 died"));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].error, "gave up after 3 retries; last: language-0 died");
}

TEST_F(RequestTable, AnErrorWithoutAKindIsInternalAndASuccessHasNone) {
  table.finish(add(), "language stage: boom");
  table.finish(add(), "bad image", "", ErrorKind::kBadRequest);
  table.finish(add(), "", "eos");
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].error_kind, ErrorKind::kInternal);
  EXPECT_EQ(results[1].error_kind, ErrorKind::kBadRequest);
  EXPECT_EQ(std::string(error_kind_name(results[1].error_kind)), "bad_request");
  EXPECT_TRUE(results[2].ok);
  EXPECT_EQ(results[2].error_kind, ErrorKind::kNone);
  EXPECT_EQ(results[2].finish, "eos");
  EXPECT_EQ(results[2].client_id, "client-7");
}

TEST_F(RequestTable, TheResultTimesEachStepFromSubmission) {
  Request& r = add();
  const uint64_t id = r.id;
  clock.advance(milliseconds(10));
  r.dispatched = clock.now;
  clock.advance(milliseconds(30));
  table.put_embeddings(r, testing_fakes::fake_embeddings(1));
  clock.advance(milliseconds(5));
  r.handed_off = clock.now;
  clock.advance(milliseconds(15));
  r.first_token = clock.now;
  clock.advance(milliseconds(40));
  table.finish(r, "", "eos");
  ASSERT_EQ(results.size(), 1u);
  const RequestResult& result = results[0];
  EXPECT_EQ(result.id, id);
  EXPECT_DOUBLE_EQ(result.queue_ms, 10);
  EXPECT_DOUBLE_EQ(result.vision_ms, 40);
  EXPECT_DOUBLE_EQ(result.handoff_ms, 5);
  EXPECT_DOUBLE_EQ(result.first_token_ms, 60);
  EXPECT_DOUBLE_EQ(result.total_ms, 100);
  EXPECT_EQ(result.embedding_bytes, 4u * 8 * 2);
  EXPECT_EQ(result.prompt_tokens, 3);
  EXPECT_FALSE(store.has(id));  // its embeddings go with it
}

TEST_F(RequestTable, FinishingStreamsWhatTheStopStringsHeldBack) {
  RequestSpec spec;
  spec.generation.stop = {"END"};
  Request& r = table.add(spec);
  EXPECT_EQ(r.answer.push("an answer E"), "an answer ");  // "E" may begin "END"
  table.finish(r, "", "eos");
  EXPECT_EQ(texts, (std::vector<std::string>{"E"}));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].text, "an answer E");
}

TEST_F(RequestTable, DrainingEndsOnlyTheRequestsNoWorkerHasTouched) {
  const uint64_t waiting = add().id;
  const uint64_t text_waiting = add({}).id;
  Request& in_vision = add();
  in_vision.progress = Progress::kInVision;
  Request& embedded = add();
  table.put_embeddings(embedded, testing_fakes::fake_embeddings(1));
  Request& resumed = add({});
  resumed.tokens = {4};  // streamed some before its worker died
  const std::vector<uint64_t> kept = {in_vision.id, embedded.id, resumed.id};
  table.drain();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].id, waiting);
  EXPECT_EQ(results[1].id, text_waiting);
  EXPECT_EQ(results[0].error, "cancelled: the pipeline is shutting down");
  EXPECT_EQ(results[0].error_kind, ErrorKind::kUnavailable);
  for (uint64_t id : kept) EXPECT_NE(table.find(id), nullptr);
}

TEST_F(RequestTable, QueuesCountTheRequestsWaitingForEachStage) {
  add();
  add();
  add({});
  add().progress = Progress::kInVision;
  const StageQueues queues = table.queues();
  EXPECT_EQ(queues.vision, 2u);
  EXPECT_EQ(queues.language, 1u);
}

TEST_F(RequestTable, EmbeddingsMoveTheRequestOnToWaitForTheLanguageStageSinceThen) {
  Request& r = add();
  r.worker = 0;
  clock.advance(milliseconds(20));
  table.put_embeddings(r, testing_fakes::fake_embeddings(1));
  EXPECT_EQ(r.progress, Progress::kNeedLanguage);
  EXPECT_EQ(r.worker, -1);
  EXPECT_EQ(r.waiting_since(), clock.now);  // the language stage's wait starts here
  EXPECT_EQ(table.embeddings(r.id).size(), 1u);
}

}  // namespace
