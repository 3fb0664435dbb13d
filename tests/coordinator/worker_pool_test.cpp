// The worker pool without processes: liveness, deaths, backoff, the restart budget, exits
// and the lease's states, over a fake transport and a hand-set clock.
#include "coordinator/worker_pool.h"

#include <gtest/gtest.h>

#include "tests/coordinator/fake_workers.h"

namespace llava {
namespace {

using std::chrono::milliseconds;
using testing_fakes::Bench;
using testing_fakes::Kind;

// Concurrent, one worker a stage, both started and registered (not granted).
void registered(Bench& b) {
  for (auto& slot : b.workers->slots()) b.workers->start(slot);
  b.hello_all();
}

TEST(WorkerPool, AWorkerSilentForLongerThanLivenessHeartbeatsIsDeclaredDead) {
  Bench b(Mode::kConcurrent);  // heartbeat 500 ms, liveness 3
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  const pid_t pid = vision.pid;
  b.workers->assign(vision, 42);
  b.clock.advance(milliseconds(1500));
  EXPECT_TRUE(b.workers->check_liveness().empty());
  b.workers->heard_from(b.slot("language-0"));
  b.clock.advance(milliseconds(1));
  LostTasks lost = b.workers->check_liveness();
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].request, 42u);
  EXPECT_EQ(lost[0].why, "vision-0 no heartbeat for 1501 ms");
  EXPECT_EQ(vision.state, WorkerState::kDown);
  EXPECT_EQ(b.transport.killed, (std::vector<pid_t>{pid}));
  EXPECT_EQ(b.workers->timeline().back().what, "died");
  EXPECT_EQ(b.slot("language-0").state, WorkerState::kReady);
}

TEST(WorkerPool, AStartingWorkerHasTheStartupGraceToSayHello) {
  Bench b(Mode::kConcurrent);
  b.workers->start(b.slot("vision-0"));
  b.clock.advance(kStartupGrace);
  b.workers->check_liveness();
  EXPECT_EQ(b.slot("vision-0").state, WorkerState::kStarting);
  b.clock.advance(milliseconds(1));
  b.workers->check_liveness();
  EXPECT_EQ(b.slot("vision-0").state, WorkerState::kDown);
}

TEST(WorkerPool, BackoffDoublesFromAHundredMillisecondsUpToFiveSeconds) {
  EXPECT_EQ(restart_backoff(1), milliseconds(100));
  EXPECT_EQ(restart_backoff(2), milliseconds(200));
  EXPECT_EQ(restart_backoff(3), milliseconds(400));
  EXPECT_EQ(restart_backoff(6), milliseconds(3200));
  EXPECT_EQ(restart_backoff(7), milliseconds(5000));
  EXPECT_EQ(restart_backoff(50), milliseconds(5000));
}

TEST(WorkerPool, ADeadWorkerIsStartedAgainOnlyAfterItsBackoff) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  b.workers->worker_died(vision, "killed by signal 9");
  b.clock.advance(milliseconds(99));
  EXPECT_FALSE(b.workers->restart_due(vision));
  b.clock.advance(milliseconds(1));
  EXPECT_TRUE(b.workers->restart_due(vision));
  b.workers->worker_died(vision, "killed by signal 9");  // a second death in the window
  b.clock.advance(milliseconds(199));
  EXPECT_FALSE(b.workers->restart_due(vision));
  b.clock.advance(milliseconds(1));
  EXPECT_TRUE(b.workers->restart_due(vision));
  EXPECT_EQ(vision.report.restarts, 2);
}

TEST(WorkerPool, TheRestartBudgetRecoversAsDeathsLeaveItsSlidingWindow) {
  Bench b(Mode::kConcurrent);
  b.config.coordinator.max_restarts_per_minute = 2;
  b.config.coordinator.restart_window_ms = 60000;
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  for (int i = 0; i < 3; ++i) {
    b.workers->worker_died(vision, "exited with code 1");
    b.clock.advance(std::chrono::seconds(10));
  }
  std::string why;
  EXPECT_TRUE(b.workers->over_restart_budget(vision, &why));
  EXPECT_EQ(why.rfind("vision-0 failed 3 times in", 0), 0u) << why;
  EXPECT_TRUE(b.workers->stage_broken(StageKind::kVision, &why));
  EXPECT_FALSE(b.workers->restart_due(vision));
  b.clock.advance(std::chrono::seconds(30) + milliseconds(1));  // the first death is 60 s old
  EXPECT_FALSE(b.workers->over_restart_budget(vision, &why));
  EXPECT_TRUE(b.workers->restart_due(vision));
}

TEST(WorkerPool, AnExternalWorkerIsNeverOverTheBudgetNorStartedHere) {
  Bench b(Mode::kConcurrent);
  b.config.coordinator.max_restarts_per_minute = 0;
  WorkerSlot& vision = b.slot("vision-0");
  vision.external = true;
  b.workers->worker_died(vision, "registered again");
  std::string why;
  EXPECT_FALSE(b.workers->over_restart_budget(vision, &why));
  b.clock.advance(std::chrono::seconds(10));
  EXPECT_FALSE(b.workers->restart_due(vision));
}

TEST(WorkerPool, TheLeaseGoesFromGrantedThroughReleasingBackToNone) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& language = b.slot("language-0");
  LostTasks lost;
  EXPECT_TRUE(b.workers->device_free(language.device));
  ASSERT_TRUE(b.workers->grant(language, -1, lost));
  EXPECT_EQ(language.lease, Lease::kGranted);
  EXPECT_FALSE(b.workers->device_free(language.device));
  ASSERT_TRUE(b.workers->release(language, Release::kUnload, lost));
  EXPECT_EQ(language.lease, Lease::kReleasing);
  EXPECT_TRUE(b.workers->releasing());
  b.workers->released(language);
  EXPECT_EQ(language.lease, Lease::kNone);
  EXPECT_TRUE(b.workers->device_free(language.device));
  auto grants = b.transport.of(Kind::LEASE_GRANT);
  auto releases = b.transport.of(Kind::LEASE_RELEASE);
  ASSERT_EQ(grants.size(), 1u);
  ASSERT_EQ(releases.size(), 1u);
  EXPECT_EQ(grants[0].epoch, 1u);
  EXPECT_EQ(releases[0].epoch, 1u);  // the release names the grant it ends
  EXPECT_EQ(releases[0].how, schema::ReleaseHow::UNLOAD);
  EXPECT_EQ(language.report.leases, 1);
}

TEST(WorkerPool, EachReleaseWaySaysItselfOnTheWire) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& language = b.slot("language-0");
  LostTasks lost;
  for (Release how : {Release::kExit, Release::kUnload, Release::kOffload}) {
    b.workers->grant(language, -1, lost);
    b.workers->release(language, how, lost);
    b.workers->released(language);
    language.lease = Lease::kNone;  // as if its exit had been reaped
  }
  auto releases = b.transport.of(Kind::LEASE_RELEASE);
  ASSERT_EQ(releases.size(), 3u);
  EXPECT_EQ(releases[0].how, schema::ReleaseHow::EXIT);
  EXPECT_EQ(releases[1].how, schema::ReleaseHow::UNLOAD);
  EXPECT_EQ(releases[2].how, schema::ReleaseHow::OFFLOAD);
}

TEST(WorkerPool, AnExitAfterAReleaseToExitIsNoDeath) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  LostTasks lost;
  b.workers->grant(vision, -1, lost);
  b.workers->release(vision, Release::kExit, lost);
  EXPECT_EQ(vision.lease, Lease::kReleasingToExit);
  b.workers->released(vision);
  EXPECT_EQ(vision.lease, Lease::kExiting);
  EXPECT_FALSE(b.workers->device_free(vision.device));  // until the process is gone
  b.transport.exits.push_back({vision.pid, "exited with code 0", 0});
  b.workers->reap();
  EXPECT_EQ(vision.state, WorkerState::kDown);
  EXPECT_EQ(vision.lease, Lease::kNone);
  EXPECT_EQ(vision.report.restarts, 0);
  EXPECT_EQ(b.workers->timeline().back().what, "exited");
  EXPECT_TRUE(b.workers->restart_due(vision));  // no backoff
}

TEST(WorkerPool, AnExitNobodyAskedForIsADeathThatHandsBackItsRequests) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  b.workers->assign(vision, 7);
  b.transport.exits.push_back({vision.pid, "killed by signal 9", 137});
  LostTasks lost = b.workers->reap();
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].why, "vision-0 killed by signal 9");
  EXPECT_EQ(vision.report.restarts, 1);
  EXPECT_EQ(vision.last_death, "killed by signal 9");
  EXPECT_TRUE(b.transport.killed.empty());  // already gone: nothing to kill
}

TEST(WorkerPool, AWorkerThatRefusesItsCommandLineOrCannotRunEndsThePipeline) {
  Bench b(Mode::kConcurrent);
  registered(b);
  b.transport.exits.push_back({b.slot("vision-0").pid, "exited with code 2", 2});
  b.workers->reap();
  EXPECT_EQ(b.workers->fatal(),
            "vision-0 exited with code 2: its command line or config was refused");
  b.transport.exits.push_back({b.slot("language-0").pid, "exited with code 127", 127});
  b.workers->reap();
  EXPECT_EQ(b.workers->fatal(), "language-0: cannot start the worker program /fake/llava-stage");
}

TEST(WorkerPool, AnUnreachableWorkerIsDeclaredDeadAndABusyOneIsNot) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  b.workers->assign(vision, 3);
  LostTasks lost;
  b.transport.answers["vision-0"] = SendResult::kBusy;
  EXPECT_FALSE(b.workers->grant(vision, -1, lost));
  EXPECT_EQ(vision.state, WorkerState::kReady);
  EXPECT_TRUE(lost.empty());
  b.transport.answers["vision-0"] = SendResult::kGone;
  EXPECT_FALSE(b.workers->grant(vision, -1, lost));
  EXPECT_EQ(vision.state, WorkerState::kDown);
  EXPECT_EQ(vision.last_death, "unreachable");
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].request, 3u);
}

TEST(WorkerPool, AGoneSocketOfAnEndedProcessIsReportedByItsExitStatus) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& vision = b.slot("vision-0");
  b.transport.answers["vision-0"] = SendResult::kGone;
  b.transport.exit_on_wait[vision.pid] = {vision.pid, "killed by signal 11", 139};
  LostTasks lost;
  b.workers->grant(vision, -1, lost);
  EXPECT_EQ(vision.last_death, "killed by signal 11");
}

TEST(WorkerPool, HeartbeatsGoOutOncePerIntervalAndNotToAWorkerToldToExit) {
  Bench b(Mode::kConcurrent);
  registered(b);
  b.workers->heartbeat();
  EXPECT_EQ(b.transport.count(Kind::HEARTBEAT), 2u);
  b.clock.advance(milliseconds(499));
  b.workers->heartbeat();
  EXPECT_EQ(b.transport.count(Kind::HEARTBEAT), 2u);
  LostTasks lost;
  b.workers->grant(b.slot("vision-0"), -1, lost);
  b.workers->release(b.slot("vision-0"), Release::kExit, lost);
  b.clock.advance(milliseconds(1));
  b.workers->heartbeat();
  EXPECT_EQ(b.transport.count(Kind::HEARTBEAT, "vision-0"), 1u);
  EXPECT_EQ(b.transport.count(Kind::HEARTBEAT, "language-0"), 2u);
}

TEST(WorkerPool, TakingBackVoidsTheLeaseAndHandsBackEveryRequest) {
  Bench b(Mode::kConcurrent);
  registered(b);
  WorkerSlot& language = b.slot("language-0");
  LostTasks lost;
  b.workers->grant(language, -1, lost);
  b.workers->assign(language, 5);
  b.workers->assign(language, 6);
  lost = b.workers->take_back(language, "registered again");
  ASSERT_EQ(lost.size(), 2u);
  EXPECT_EQ(lost[1].request, 6u);
  EXPECT_EQ(lost[1].why, "language-0 registered again");
  EXPECT_EQ(language.lease, Lease::kNone);
  EXPECT_TRUE(language.routing.empty());
  EXPECT_TRUE(language.outstanding.empty());
}

TEST(WorkerPool, AnExternalStageUnregisteredPastExternalWaitIsBroken) {
  Bench b(Mode::kConcurrent);
  b.config.coordinator.external_wait_ms = 1000;
  b.slot("language-0").external = true;
  std::string why;
  b.clock.advance(milliseconds(1000));
  EXPECT_FALSE(b.workers->stage_broken(StageKind::kLanguage, &why));
  b.clock.advance(milliseconds(1));
  EXPECT_TRUE(b.workers->stage_broken(StageKind::kLanguage, &why));
  EXPECT_NE(why.find("llava-stage --stage language --replica 0"), std::string::npos) << why;
}

}  // namespace
}  // namespace llava
