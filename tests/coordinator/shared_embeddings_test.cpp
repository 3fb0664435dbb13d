// The coordinator's side of embeddings through shared memory: which tasks are offered a
// range, which answers are read from one, and when a range goes back.
#include "coordinator/shared_embeddings.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>

namespace llava {
namespace {

constexpr uint64_t kImage = 3 * SharedRanges::kAlign;  // one image's embeddings, bytes

bool exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

std::unique_ptr<wire::Outgoing> task(uint64_t request, uint32_t attempt) {
  auto out = std::make_unique<wire::Outgoing>(request, attempt);
  out->header().getBody().initVisionTask().setImageCount(1);
  return out;
}

// An answer's header, as the vision worker would send it for `task`'s range.
struct Answer {
  capnp::MallocMessageBuilder builder;
  schema::Header::Builder header = builder.initRoot<schema::Header>();
  Answer(uint64_t request, uint32_t attempt, const std::string& file) {
    header.setRequestId(request);
    header.setAttempt(attempt);
    header.setSharedMemory(file);
    header.getBody().initEmbeddings();
  }
  schema::Header::Reader reader() { return header.asReader(); }
};

const auto kAllWaiting = [](uint64_t, uint32_t) { return true; };

class SharedEmbeddingsTest : public ::testing::Test {
 protected:
  SharedEmbeddings shared{4 * kImage};  // four images' room
  void SetUp() override {
    ASSERT_FALSE(shared.id().empty()) << "no /dev/shm here";
    shared.registered(0, shared.id());
    shared.learn(kImage);
  }
  bool offer(uint64_t request, uint32_t attempt = 0, wire::Outgoing* out = nullptr,
             std::function<bool(uint64_t, uint32_t)> waiting = kAllWaiting,
             std::function<void()> make_room = {}) {
    auto made = task(request, attempt);
    return shared.offer(0, out ? *out : *made, 1, waiting, make_room);
  }
};

TEST_F(SharedEmbeddingsTest, OffersARangeOnlyToAWorkerThatSeesOurMemoryOnceTheSizeIsKnown) {
  SharedEmbeddings fresh(4 * kImage);
  fresh.registered(0, fresh.id());
  auto first = task(1, 0);
  EXPECT_FALSE(fresh.offer(0, *first, 1, kAllWaiting, {})) << "an image's size is not known yet";
  fresh.learn(kImage);
  EXPECT_TRUE(fresh.offer(0, *first, 1, kAllWaiting, {}));
  auto body = first->header().getBody().getVisionTask();
  EXPECT_EQ(body.getSharedBytes(), kImage);
  EXPECT_EQ(body.getSharedOffset() % SharedRanges::kAlign, 0u);
  EXPECT_TRUE(exists(first->header().getSharedMemory().cStr()));
  fresh.registered(1, "another-host:1:2");  // another /dev/shm
  auto other = task(2, 0);
  EXPECT_FALSE(fresh.offer(1, *other, 1, kAllWaiting, {}));
  EXPECT_FALSE(other->header().hasSharedMemory());
  EXPECT_FALSE(fresh.sees_ours(1));
  EXPECT_TRUE(fresh.sees_ours(0));
  fresh.refused(0);
  auto after = task(3, 0);
  EXPECT_FALSE(fresh.offer(0, *after, 1, kAllWaiting, {}));
  SharedEmbeddings off(0);
  off.registered(0, off.id());
  off.learn(kImage);
  auto none = task(4, 0);
  EXPECT_FALSE(off.offer(0, *none, 1, kAllWaiting, {}));
}

TEST_F(SharedEmbeddingsTest, ReadsAnAnswerOnlyWithinTheRangeOfferedToItsAttempt) {
  auto out = task(7, 2);
  ASSERT_TRUE(offer(7, 2, out.get()));
  const std::string file = out->header().getSharedMemory().cStr();
  const uint64_t at = out->header().getBody().getVisionTask().getSharedOffset();
  auto writer = SharedMemory::open(file);  // the vision worker's side
  std::memset(writer->data() + at, 0x42, kImage);

  Answer good(7, 2, file);
  wire::SharedView view = shared.resolve(good.reader(), at, kImage);
  ASSERT_EQ(view.bytes.size(), kImage);
  EXPECT_EQ(static_cast<const char*>(view.bytes.data())[kImage - 1], 0x42);
  EXPECT_EQ(view.memory->path(), file);
  EXPECT_EQ(shared.frames_read(), 1u);

  Answer stale(7, 1, file);
  EXPECT_THROW(shared.resolve(stale.reader(), at, kImage), SharedMemoryError);
  Answer other_request(8, 2, file);
  EXPECT_THROW(shared.resolve(other_request.reader(), at, kImage), SharedMemoryError);
  Answer wrong_file(7, 2, "/dev/shm/llava-pipe-1-2-3");
  EXPECT_THROW(shared.resolve(wrong_file.reader(), at, kImage), SharedMemoryError);
  for (auto [offset, bytes] : std::vector<std::pair<uint64_t, uint64_t>>{
           {at + 1, kImage}, {at - 1, 2}, {at, kImage + 1}, {at + kImage, 1}, {~0ull, 2}}) {
    try {
      shared.resolve(good.reader(), offset, bytes);
      FAIL() << "read [" << offset << ", +" << bytes << ")";
    } catch (const SharedMemoryError& e) {
      EXPECT_EQ(e.request, 7u);
      EXPECT_EQ(e.attempt, 2u);
    }
  }
  shared.answered(7, 2);
  EXPECT_THROW(shared.resolve(good.reader(), at, kImage), SharedMemoryError) << "answered";
}

TEST_F(SharedEmbeddingsTest, ARangeGoesBackWhenItsTaskIsAnsweredAndItsFramesAreGone) {
  std::vector<std::unique_ptr<wire::Outgoing>> tasks;
  for (uint64_t r = 1; r <= 4; ++r) {
    tasks.push_back(task(r, 0));
    ASSERT_TRUE(offer(r, 0, tasks.back().get()));
  }
  EXPECT_FALSE(offer(5)) << "four images' room";
  const std::string file = tasks[0]->header().getSharedMemory().cStr();
  const uint64_t at = tasks[0]->header().getBody().getVisionTask().getSharedOffset();
  Answer answer(1, 0, file);
  wire::SharedView view = shared.resolve(answer.reader(), at, kImage);
  shared.answered(1, 0);
  EXPECT_FALSE(offer(5)) << "the answer's frame still uses its range";
  zmq::message_t kept;
  kept.copy(view.bytes);  // the store's copy
  view.bytes = zmq::message_t();
  EXPECT_FALSE(offer(5));
  kept = zmq::message_t();
  EXPECT_TRUE(offer(5)) << "its last frame is gone";
  shared.answered(2, 0);  // a failure's answer: its range was never read
  EXPECT_TRUE(offer(6));
}

TEST_F(SharedEmbeddingsTest, WithoutRoomTasksGivenUpOnGoFirstThenTheCacheIsAsked) {
  for (uint64_t r = 1; r <= 4; ++r) ASSERT_TRUE(offer(r));
  // Request 3 was cancelled: its range goes back when there is no room, not before.
  auto waiting = [](uint64_t request, uint32_t) { return request != 3; };
  int asked = 0;
  EXPECT_TRUE(offer(5, 0, nullptr, waiting, [&] { ++asked; }));
  EXPECT_EQ(asked, 0);
  EXPECT_FALSE(offer(6, 0, nullptr, kAllWaiting, [&] { ++asked; }));
  EXPECT_EQ(asked, 1);
  // A new attempt of a request gives its old range back at once.
  EXPECT_TRUE(offer(1, 1));
}

TEST_F(SharedEmbeddingsTest, ANewRegistrationGetsANewFileAndTheOldOneLivesWithItsFrames) {
  auto out = task(1, 0);
  ASSERT_TRUE(offer(1, 0, out.get()));
  const std::string old_file = out->header().getSharedMemory().cStr();
  Answer answer(1, 0, old_file);
  wire::SharedView view = shared.resolve(
      answer.reader(), out->header().getBody().getVisionTask().getSharedOffset(), kImage);
  shared.answered(1, 0);
  shared.registered(0, shared.id());  // the worker died and a new one registered
  auto next = task(2, 0);
  ASSERT_TRUE(offer(2, 0, next.get()));
  EXPECT_NE(std::string(next->header().getSharedMemory().cStr()), old_file);
  EXPECT_TRUE(exists(old_file)) << "a frame still lies in it";
  view = wire::SharedView{};
  EXPECT_FALSE(exists(old_file));
}

}  // namespace
}  // namespace llava
