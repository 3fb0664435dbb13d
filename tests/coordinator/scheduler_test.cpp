// The scheduler without processes: sequential turns and lazy leases, concurrent dispatch,
// bursts, twin images, requeues and cancels, over a fake transport and a hand-set clock.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include "tests/coordinator/fake_workers.h"

namespace llava {
namespace {

using testing_fakes::Bench;
using testing_fakes::Kind;

// Sequential: a text-only request makes the language stage the holder, started, granted
// and sent it (so the language worker is resident).
uint64_t resident_language_worker(Bench& b) {
  const uint64_t first = b.submit({});
  b.scheduler->schedule();
  b.hello("language-0");
  b.scheduler->schedule();
  return first;
}

// Concurrent: every worker started, registered and granted.
void all_granted(Bench& b) {
  b.scheduler->schedule();
  b.hello_all();
  b.scheduler->schedule();
}

TEST(Scheduler, SequentialStartsTheStageThatHasWorkAndGrantsItTheDeviceOnceItRegisters) {
  Bench b(Mode::kSequential);
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  ASSERT_EQ(b.transport.started.size(), 1u);
  EXPECT_EQ(b.transport.started[0].first, StageKind::kVision);
  EXPECT_EQ(b.transport.count(Kind::LEASE_GRANT), 0u);  // not before its hello
  b.hello("vision-0");
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::LEASE_GRANT, "vision-0"), 1u);
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK, "vision-0"), 1u);
  EXPECT_EQ(b.request(id).progress, Progress::kInVision);
  EXPECT_EQ(b.scheduler->holder(), StageKind::kVision);
}

TEST(Scheduler, SequentialFindsItsWorkersByStageWhateverTheOrderOfThePlan) {
  Bench b(Mode::kSequential, 1, 1, 2, 2, /*language_first=*/true);
  b.submit({"image-a"});
  b.scheduler->schedule();
  ASSERT_EQ(b.transport.started.size(), 1u);
  EXPECT_EQ(b.transport.started[0].first, StageKind::kVision);
  EXPECT_EQ(b.slot("vision-0").state, WorkerState::kStarting);
  EXPECT_EQ(b.slot("language-0").state, WorkerState::kDown);
}

TEST(Scheduler, SequentialHandsTheDeviceToTheLanguageStageWhenVisionHasNothingLeft) {
  Bench b(Mode::kSequential);
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  b.hello("vision-0");
  b.scheduler->schedule();
  b.embed(id);
  b.scheduler->schedule();
  auto releases = b.transport.of(Kind::LEASE_RELEASE, "vision-0");
  ASSERT_EQ(releases.size(), 1u);
  EXPECT_EQ(releases[0].how, schema::ReleaseHow::EXIT);
  EXPECT_EQ(releases[0].epoch, 1u);
  EXPECT_EQ(b.transport.started.size(), 1u);  // the language worker waits for the device
  b.released("vision-0");
  b.scheduler->schedule();
  ASSERT_EQ(b.transport.started.size(), 2u);
  EXPECT_EQ(b.transport.started[1].first, StageKind::kLanguage);
  b.hello("language-0");
  b.scheduler->schedule();
  auto tasks = b.transport.of(Kind::LANGUAGE_TASK, "language-0");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].request, id);
  EXPECT_EQ(tasks[0].frames, 1u);  // its image's embeddings go with it
  EXPECT_EQ(b.request(id).progress, Progress::kInLanguage);
}

// The model's end-of-sequence ids (2 here) go to the worker as stop tokens, but for a
// request that asks to ignore them (vLLM's ignore_eos).
TEST(Scheduler, TheLanguageTaskStopsAtEosUnlessTheRequestIgnoresIt) {
  Bench b(Mode::kSequential);
  const uint64_t plain = b.submit({}, 8), ignoring = b.submit({}, 8, true);
  b.scheduler->schedule();
  b.hello("language-0");
  b.scheduler->schedule();
  const auto tasks = b.transport.of(Kind::LANGUAGE_TASK, "language-0");
  ASSERT_EQ(tasks.size(), 2u);
  for (const auto& task : tasks) {
    EXPECT_EQ(task.stop_token_ids,
              task.request == ignoring ? std::vector<int32_t>{} : std::vector<int32_t>{2})
        << (task.request == plain ? "plain" : "ignoring eos");
  }
}

// A JSON task's token table (~300 KB) goes to a worker process once: the worker keeps it,
// later JSON tasks to that process go without it, and a new process (another incarnation,
// as after a restart) is sent it again.
TEST(Scheduler, AJsonTasksTokenTableGoesOnceToEachWorkerProcess) {
  Bench b(Mode::kConcurrent, 1, 1, 2, 4);
  auto table = std::make_shared<TokenTable>();
  table->bytes = "abc";
  table->ends = {1, 2, 3};
  auto json = [&](uint64_t id) {
    b.request(id).spec.generation.json_object = true;
    b.request(id).spec.generation.json_tokens = table;
    return id;
  };
  const uint64_t first = json(b.submit({})), plain = b.submit({}), second = json(b.submit({}));
  all_granted(b);
  auto tables = [&](const std::string& worker) {
    std::map<uint64_t, std::vector<size_t>> out;  // per request, each task's table tokens
    for (const auto& task : b.transport.of(Kind::LANGUAGE_TASK, worker))
      out[task.request].push_back(task.table_tokens);
    return out;
  };
  auto sent = tables("language-0");
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_EQ(sent[first], std::vector<size_t>{3});  // sent first: with the table
  EXPECT_EQ(sent[plain], std::vector<size_t>{0});
  EXPECT_EQ(sent[second], std::vector<size_t>{0});
  b.done(first);
  b.done(plain);
  b.done(second);
  const uint64_t third = json(b.submit({}));
  b.scheduler->schedule();
  EXPECT_EQ(tables("language-0")[third], std::vector<size_t>{0});
  // Another process registered in the slot (a restart, or an external worker's new hello).
  b.workers->registered(b.slot("language-0"), "language-0", 2);
  b.done(third);
  const uint64_t fourth = json(b.submit({})), fifth = json(b.submit({}));
  b.scheduler->schedule();
  sent = tables("language-0");
  EXPECT_EQ(sent[fourth], std::vector<size_t>{3});
  EXPECT_EQ(sent[fifth], std::vector<size_t>{0});
}

TEST(Scheduler, CachedImageRequestsGoToTheResidentLanguageWorker) {
  Bench b(Mode::kSequential);
  const uint64_t first = b.submit({"image-a"});
  b.scheduler->schedule();
  b.hello("vision-0");
  b.scheduler->schedule();
  b.embed(first);
  b.scheduler->schedule();
  b.released("vision-0");
  b.scheduler->schedule();
  b.hello("language-0");
  b.scheduler->schedule();
  b.done(first);
  b.scheduler->schedule();  // nothing to do: the language worker keeps the device
  EXPECT_EQ(b.transport.count(Kind::LEASE_RELEASE, "language-0"), 0u);

  const uint64_t again = b.submit({"image-a"});  // the same picture, asked again
  EXPECT_EQ(b.request(again).progress, Progress::kNeedLanguage);
  EXPECT_EQ(b.request(again).cached_images, 1);
  b.scheduler->schedule();
  EXPECT_EQ(b.request(again).progress, Progress::kInLanguage);
  EXPECT_EQ(b.transport.count(Kind::LANGUAGE_TASK, "language-0"), 2u);
  EXPECT_EQ(b.transport.count(Kind::LEASE_RELEASE, "language-0"), 0u);  // no swap
  EXPECT_EQ(b.transport.started.size(), 2u);  // the vision worker was not started again
}

TEST(Scheduler, TheHolderGivesWayOnceSwapBatchRequestsWaitForTheOtherStage) {
  Bench b(Mode::kSequential);  // swap_batch 0: the vision stage's batch size, 2
  const uint64_t first = resident_language_worker(b);
  b.submit({"image-b"});
  const uint64_t text = b.submit({});
  b.scheduler->schedule();  // one waits for vision: below swap_batch, the holder goes on
  EXPECT_EQ(b.request(text).progress, Progress::kInLanguage);
  b.submit({"image-c"});
  const uint64_t later = b.submit({});
  b.scheduler->schedule();  // two wait: it starts nothing new
  EXPECT_EQ(b.request(later).progress, Progress::kNeedLanguage);
  EXPECT_EQ(b.transport.count(Kind::LEASE_RELEASE), 0u);  // it finishes what it holds first
  b.done(first);
  b.done(text);
  b.scheduler->schedule();
  auto releases = b.transport.of(Kind::LEASE_RELEASE, "language-0");
  ASSERT_EQ(releases.size(), 1u);
  EXPECT_EQ(releases[0].how, schema::ReleaseHow::UNLOAD);
  EXPECT_TRUE(b.scheduler->giving_way());
  b.released("language-0");
  b.scheduler->schedule();
  EXPECT_EQ(b.scheduler->holder(), StageKind::kVision);
  EXPECT_EQ(b.transport.started.back().first, StageKind::kVision);
}

TEST(Scheduler, TheHolderGivesWayOnceTheOldestRequestOfTheOtherStageWaitedSwapAfter) {
  Bench b(Mode::kSequential);
  b.config.coordinator.swap_after_ms = 1000;
  resident_language_worker(b);
  b.submit({"image-b"});
  b.clock.advance(std::chrono::milliseconds(999));
  const uint64_t text = b.submit({});
  b.scheduler->schedule();
  EXPECT_EQ(b.request(text).progress, Progress::kInLanguage);
  b.clock.advance(std::chrono::milliseconds(1));
  const uint64_t later = b.submit({});
  b.scheduler->schedule();
  EXPECT_EQ(b.request(later).progress, Progress::kNeedLanguage);
}

TEST(Scheduler, ANewlyGrantedHolderDispatchesBeforeItMayGiveWay) {
  Bench b(Mode::kSequential);
  const uint64_t text = b.submit({});
  b.scheduler->schedule();  // the language stage's turn; its worker starts
  b.submit({"image-b"});
  b.submit({"image-c"});  // swap_batch requests wait for vision while it loads
  b.hello("language-0");
  b.scheduler->schedule();
  EXPECT_EQ(b.request(text).progress, Progress::kInLanguage);
  EXPECT_EQ(b.transport.count(Kind::LEASE_RELEASE), 0u);
  const uint64_t later = b.submit({});
  b.scheduler->schedule();  // now it has had work in its turn: it gives way
  EXPECT_EQ(b.request(later).progress, Progress::kNeedLanguage);
}

TEST(Scheduler, AHolderWithNothingLeftToStartGivesWayAtOnce) {
  Bench b(Mode::kSequential);
  const uint64_t first = resident_language_worker(b);
  b.done(first);
  b.submit({"image-b"});
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::LEASE_RELEASE, "language-0"), 1u);
}

TEST(Scheduler, ConcurrentDispatchBalancesRequestsOverReplicas) {
  Bench b(Mode::kConcurrent, 2, 2);
  all_granted(b);
  EXPECT_EQ(b.transport.count(Kind::LEASE_GRANT), 4u);
  for (int i = 0; i < 4; ++i) b.submit({"image-" + std::to_string(i)});
  for (int i = 0; i < 4; ++i) b.submit({});
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK, "vision-0"), 2u);
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK, "vision-1"), 2u);
  EXPECT_EQ(b.transport.count(Kind::LANGUAGE_TASK, "language-0"), 2u);
  EXPECT_EQ(b.transport.count(Kind::LANGUAGE_TASK, "language-1"), 2u);
}

// The handoff ends when the language task is sent, not when send() returns: a worker may
// prefill and answer before this thread runs again, and its prefill lies within the
// language part of the first token's time (bench asserts that order).
TEST(Scheduler, TheHandoffIsStampedBeforeTheLanguageTaskIsSent) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  b.embed(id);
  const Clock::time_point embedded = b.clock.now;
  b.clock.advance(std::chrono::milliseconds(2));
  b.transport.on_send = [&](const testing_fakes::Sent& s) {
    if (s.kind == Kind::LANGUAGE_TASK) b.clock.advance(std::chrono::milliseconds(30));
  };
  b.scheduler->schedule();
  ASSERT_EQ(b.transport.count(Kind::LANGUAGE_TASK, "language-0"), 1u);
  ASSERT_TRUE(b.request(id).handed_off.has_value());
  using std::chrono::milliseconds;
  EXPECT_EQ(std::chrono::duration_cast<milliseconds>(*b.request(id).handed_off - embedded).count(),
            2);
}

// A language task names its images' contents: the same pictures give the same key (the
// worker then runs a prompt once for both), others another, none 0.
TEST(Scheduler, LanguageTasksNameTheirImagesContents) {
  Bench b(Mode::kConcurrent, 1, 1, 4, 8);
  all_granted(b);
  const uint64_t a = b.submit({"image-a"}), twin = b.submit({"image-a"}),
                 other = b.submit({"image-b"}), text = b.submit({});
  b.scheduler->schedule();
  for (uint64_t id : {a, twin, other}) {
    if (b.request(id).progress == Progress::kInVision) b.embed(id);
  }
  b.scheduler->schedule();
  std::map<uint64_t, uint64_t> key;
  for (const auto& task : b.transport.of(Kind::LANGUAGE_TASK)) key[task.request] = task.image_key;
  ASSERT_EQ(key.size(), 4u);
  EXPECT_NE(key[a], 0u);
  EXPECT_EQ(key[twin], key[a]);
  EXPECT_NE(key[other], key[a]);
  EXPECT_EQ(key[text], 0u);
}

TEST(Scheduler, AWorkerIsSentAtMostTwoBatchesOfTasks) {
  Bench b(Mode::kConcurrent, 1, 1, /*vision_batch=*/2);
  all_granted(b);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(b.submit({"image-" + std::to_string(i)}));
  b.scheduler->schedule();
  EXPECT_EQ(b.slot("vision-0").task_limit(), 4u);
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK), 4u);
  EXPECT_EQ(b.request(ids[4]).progress, Progress::kNeedVision);
  b.embed(ids[0]);
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK), 5u);
  EXPECT_EQ(b.request(ids[4]).progress, Progress::kInVision);
}

TEST(Scheduler, VisionTasksOfOnePassSayHowManyMoreFollowToTheSameWorker) {
  Bench b(Mode::kConcurrent, 2, 1, /*vision_batch=*/4);
  all_granted(b);
  for (int i = 0; i < 5; ++i) b.submit({"image-" + std::to_string(i)});
  b.scheduler->schedule();
  std::vector<uint32_t> to_first, to_second;
  for (const auto& task : b.transport.of(Kind::VISION_TASK, "vision-0"))
    to_first.push_back(task.followed_by);
  for (const auto& task : b.transport.of(Kind::VISION_TASK, "vision-1"))
    to_second.push_back(task.followed_by);
  EXPECT_EQ(to_first, (std::vector<uint32_t>{2, 1, 0}));
  EXPECT_EQ(to_second, (std::vector<uint32_t>{1, 0}));
}

TEST(Scheduler, AnImageInTwoRequestsIsEncodedOnceAndTheSecondTakesItFromTheCache) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  const uint64_t first = b.submit({"image-a"});
  const uint64_t twin = b.submit({"image-a"});
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK), 1u);
  EXPECT_EQ(b.request(twin).progress, Progress::kNeedVision);  // waits for the first's
  const uint64_t late_twin = b.submit({"image-a"});
  b.scheduler->schedule();  // the image is still in the vision stage: it waits too
  EXPECT_EQ(b.request(late_twin).progress, Progress::kNeedVision);
  b.embed(first);
  b.scheduler->schedule();
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK), 1u);
  EXPECT_EQ(b.request(twin).progress, Progress::kInLanguage);
  EXPECT_EQ(b.request(twin).cached_images, 1);
  EXPECT_EQ(b.request(late_twin).progress, Progress::kInLanguage);
}

TEST(Scheduler, ATaskForABusyWorkerWaitsForALaterPass) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  b.transport.answers["vision-0"] = SendResult::kBusy;
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  EXPECT_EQ(b.request(id).progress, Progress::kNeedVision);
  EXPECT_EQ(b.request(id).worker, -1);
  EXPECT_TRUE(b.slot("vision-0").outstanding.empty());
  EXPECT_EQ(b.slot("vision-0").state, WorkerState::kReady);  // busy is no death
  b.transport.answers.clear();
  b.scheduler->schedule();
  EXPECT_EQ(b.request(id).progress, Progress::kInVision);
  EXPECT_EQ(b.transport.count(Kind::VISION_TASK), 1u);
}

TEST(Scheduler, RequestsOfADeadWorkerGoToAnotherReplicaWithTheirNextAttempt) {
  Bench b(Mode::kConcurrent, 2, 1);
  all_granted(b);
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  ASSERT_EQ(b.transport.count(Kind::VISION_TASK, "vision-0"), 1u);
  b.scheduler->requeue(b.workers->worker_died(b.slot("vision-0"), "killed by signal 9"));
  EXPECT_EQ(b.request(id).attempt, 1u);
  EXPECT_EQ(b.requests->find(id, 0), nullptr);  // the dead worker's late reply is dropped
  b.scheduler->schedule();
  auto tasks = b.transport.of(Kind::VISION_TASK, "vision-1");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].attempt, 1u);
}

TEST(Scheduler, ARequeuedLanguageRequestResumesFromTheTokensItStreamed) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  const uint64_t id = b.submit({});
  b.scheduler->schedule();
  b.request(id).tokens = {7, 8};
  b.scheduler->requeue(b.workers->worker_died(b.slot("language-0"), "killed by signal 9"));
  b.clock.advance(kFirstBackoff);
  b.scheduler->schedule();  // restarted
  b.hello("language-0");
  b.scheduler->schedule();
  auto tasks = b.transport.of(Kind::LANGUAGE_TASK);
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[1].token_ids, (std::vector<int32_t>{1, 5, 5, 9, 7, 8}));
  EXPECT_EQ(tasks[1].resume_from, 2u);
  EXPECT_EQ(tasks[1].attempt, 1u);
}

TEST(Scheduler, ARequestWithAllItsTokensWhenItsWorkerDiedIsAnsweredWithLength) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  const uint64_t id = b.submit({}, /*max_new_tokens=*/2);
  b.scheduler->schedule();
  b.request(id).tokens = {7, 8};
  b.scheduler->requeue(b.workers->worker_died(b.slot("language-0"), "killed by signal 9"));
  b.scheduler->schedule();
  ASSERT_EQ(b.results.size(), 1u);
  EXPECT_TRUE(b.results[0].ok);
  EXPECT_EQ(b.results[0].finish, "length");
  EXPECT_EQ(b.results[0].tokens, (std::vector<int32_t>{7, 8}));
}

TEST(Scheduler, CancelTellsTheWorkerAndAnswersCancelled) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  const uint64_t id = b.submit({"image-a"});
  b.scheduler->schedule();
  b.scheduler->cancel(b.request(id), "cancelled by the client");
  auto cancels = b.transport.of(Kind::CANCEL, "vision-0");
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].request, id);
  ASSERT_EQ(b.results.size(), 1u);
  EXPECT_EQ(b.results[0].error_kind, ErrorKind::kCancelled);
  EXPECT_EQ(b.results[0].finish, "cancelled");
  EXPECT_TRUE(b.slot("vision-0").outstanding.empty());
  EXPECT_TRUE(b.requests->empty());
}

TEST(Scheduler, AStageOverItsRestartBudgetFailsTheRequestsThatNeedIt) {
  Bench b(Mode::kConcurrent);
  b.config.coordinator.max_restarts_per_minute = 1;
  all_granted(b);
  b.workers->worker_died(b.slot("vision-0"), "killed by signal 9");
  b.workers->worker_died(b.slot("vision-0"), "killed by signal 9");
  const uint64_t text = b.submit({});
  b.submit({"image-a"});
  b.scheduler->schedule();
  ASSERT_EQ(b.results.size(), 1u);
  EXPECT_EQ(b.results[0].error_kind, ErrorKind::kUnavailable);
  EXPECT_EQ(b.results[0].error.rfind("vision stage: vision-0 failed 2 times", 0), 0u)
      << b.results[0].error;
  EXPECT_EQ(b.request(text).progress, Progress::kInLanguage);  // the other stage goes on
}

TEST(Scheduler, FailAllAnswersEveryRequestAndFreesTheirWorkers) {
  Bench b(Mode::kConcurrent);
  all_granted(b);
  b.submit({"image-a"});
  b.submit({});
  b.scheduler->schedule();
  b.scheduler->fail_all("stopped");
  EXPECT_EQ(b.results.size(), 2u);
  EXPECT_TRUE(b.slot("vision-0").outstanding.empty());
  EXPECT_TRUE(b.slot("language-0").outstanding.empty());
}

}  // namespace
}  // namespace llava
