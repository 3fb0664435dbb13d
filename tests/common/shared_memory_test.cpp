// Shared memory: files in /dev/shm (made, opened, removed with their last user), the ranges
// of one, and frames that cross the wire as ranges instead of bytes.
#include "common/shared_memory.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "common/wire.h"

namespace llava {
namespace {

bool exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

TEST(SharedMemory, TwoProcessesSeeOneIdAndOneFile) {
  const std::string id = shared_memory_id();
  ASSERT_FALSE(id.empty()) << "no /dev/shm here";
  auto memory = SharedMemory::create(1 << 20);
  std::memset(memory->data(), 0x5a, memory->size());
  const pid_t child = fork();
  if (child == 0) {  // another process: the same id, and the bytes written above
    bool ok = shared_memory_id() == id;
    auto other = SharedMemory::open(memory->path());
    ok = ok && other->size() == (1u << 20) && other->data()[12345] == 0x5a;
    other->data()[7] = 0x11;  // and what it writes, the creator reads
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(memory->data()[7], 0x11);
}

TEST(SharedMemory, TheFileGoesWithTheLastViewOfIt) {
  auto memory = SharedMemory::create(64 << 10);
  const std::string path = memory->path();
  EXPECT_EQ(path.rfind("/dev/shm/llava-pipe-", 0), 0u);
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);                              // this user's only
  EXPECT_EQ(static_cast<uint64_t>(info.st_blocks) * 512, 64u << 10);  // reserved, not sparse
  bool held = false;
  auto hold = std::shared_ptr<void>(nullptr, [&](void*) { held = false; });
  held = true;
  zmq::message_t view = SharedMemory::view(memory, 4096, 100, hold);
  hold.reset();
  EXPECT_EQ(view.data(), memory->data() + 4096);
  EXPECT_EQ(view.size(), 100u);
  zmq::message_t copy;
  copy.copy(view);  // what the store and the cache do
  memory.reset();
  view = zmq::message_t();
  EXPECT_TRUE(exists(path)) << "a copy of the view still uses it";
  EXPECT_TRUE(held);
  copy = zmq::message_t();
  EXPECT_FALSE(exists(path));
  EXPECT_FALSE(held);
}

TEST(SharedMemory, AViewOutsideTheFileIsRefused) {
  auto memory = SharedMemory::create(8192);
  EXPECT_THROW(SharedMemory::view(memory, 8192, 1), std::out_of_range);
  EXPECT_THROW(SharedMemory::view(memory, 4096, 4097), std::out_of_range);
  EXPECT_THROW(SharedMemory::view(memory, ~0ull, 2), std::out_of_range);  // no wrap-around
  EXPECT_NO_THROW(SharedMemory::view(memory, 0, 8192));
}

TEST(SharedMemory, OpensOnlyItsOwnFiles) {
  for (const std::string path :
       {"/etc/passwd", "/dev/shm/../../etc/passwd", "/dev/shm/other-file", "/dev/shm/llava-pipe-",
        "/dev/shm/llava-pipe-1-2/../../x", "relative", ""}) {
    EXPECT_THROW(SharedMemory::open(path), std::runtime_error) << path;
  }
  EXPECT_THROW(SharedMemory::open("/dev/shm/llava-pipe-999999999-0-0"), std::runtime_error);
  SharedMemoryMaps maps;
  try {
    maps.view("/dev/shm/llava-pipe-999999999-0-0", 0, 1, 42, 3);
    FAIL() << "a missing file was mapped";
  } catch (const SharedMemoryError& e) {
    EXPECT_EQ(e.request, 42u);
    EXPECT_EQ(e.attempt, 3u);
    EXPECT_NE(std::string(e.what()).find("llava-pipe-999999999-0-0"), std::string::npos);
  }
}

TEST(SharedMemory, MapsKeepTheRecentFilesAndCheckBounds) {
  SharedMemoryMaps maps;
  std::vector<std::shared_ptr<SharedMemory>> files;
  for (int i = 0; i < 6; ++i) files.push_back(SharedMemory::create(4096));
  files[0]->data()[10] = 42;
  zmq::message_t early = maps.view(files[0]->path(), 10, 1);
  for (int i = 1; i < 6; ++i) maps.view(files[i]->path(), 0, 4096);  // files[0] evicted
  EXPECT_EQ(*static_cast<const char*>(early.data()), 42) << "the view keeps its mapping";
  EXPECT_EQ(maps.get(files[5]->path()).get(), maps.get(files[5]->path()).get());
  EXPECT_THROW(maps.view(files[5]->path(), 4000, 97), SharedMemoryError);
}

// What a worker does to each file it maps (registering it with CUDA), once, and undoes
// just before the file is unmapped, while it can still read it.
TEST(SharedMemory, AMapsHookRunsOnceAFileAndItsUndoBeforeTheUnmap) {
  std::vector<std::string> mapped;
  std::vector<char> read_at_unmap;
  SharedMemoryMaps maps([&](SharedMemory& m) {
    mapped.push_back(m.path());
    m.before_unmap([&](SharedMemory& gone) { read_at_unmap.push_back(gone.data()[0]); });
  });
  auto a = SharedMemory::create(4096), b = SharedMemory::create(4096);
  a->data()[0] = 'a';
  zmq::message_t view = maps.view(a->path(), 0, 1);
  maps.view(a->path(), 1, 1);
  maps.view(b->path(), 0, 1);
  EXPECT_EQ(mapped, (std::vector<std::string>{a->path(), b->path()}));
  for (int i = 0; i < 4; ++i) maps.get(SharedMemory::create(4096)->path());  // a and b evicted
  EXPECT_EQ(read_at_unmap.size(), 1u) << "b unmapped; a still has a view";
  view = zmq::message_t();
  ASSERT_EQ(read_at_unmap.size(), 2u);
  EXPECT_EQ(read_at_unmap.back(), 'a');
}

TEST(SharedMemory, FilesOfCoordinatorsThatAreGoneAreRemoved) {
  // A child makes a file and dies without removing it (killed); a live process's stays.
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = fork();
  if (child == 0) {
    auto* leaked = new std::shared_ptr<SharedMemory>(SharedMemory::create(4096));
    const std::string path = (*leaked)->path();
    (void)!::write(pipe_fds[1], path.c_str(), path.size() + 1);
    _exit(0);  // no destructor: the file stays, as after a SIGKILL
  }
  char buffer[256] = {};
  ASSERT_GT(::read(pipe_fds[0], buffer, sizeof buffer), 0);
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  int status = 0;
  waitpid(child, &status, 0);
  const std::string leaked = buffer;
  ASSERT_TRUE(exists(leaked));
  auto live = SharedMemory::create(4096);
  // Made in another pid namespace (another container sharing /dev/shm): its pid means
  // nothing here, so it stays.
  const std::string foreign = "/dev/shm/llava-pipe-999999999-1-0-0";
  std::ofstream(foreign) << "x";
  remove_stale_shared_memory();
  EXPECT_FALSE(exists(leaked));
  EXPECT_TRUE(exists(live->path()));
  EXPECT_TRUE(exists(foreign));
  ::unlink(foreign.c_str());
}

TEST(SharedRanges, TakesFirstFitOnPagesAndMergesWhatComesBack) {
  SharedRanges ranges(10 * SharedRanges::kAlign + 100);  // the tail past a page is unused
  EXPECT_EQ(ranges.free_bytes(), 10 * SharedRanges::kAlign);
  auto a = ranges.take(1);                             // one page
  auto b = ranges.take(3 * SharedRanges::kAlign);      // three
  auto c = ranges.take(2 * SharedRanges::kAlign + 1);  // three
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, SharedRanges::kAlign);
  EXPECT_EQ(*c, 4 * SharedRanges::kAlign);
  EXPECT_FALSE(ranges.take(4 * SharedRanges::kAlign));  // 3 pages left
  EXPECT_FALSE(ranges.take(0));
  ranges.give(*b, 3 * SharedRanges::kAlign);
  ranges.give(*a, 1);
  // a and b merged: four pages from 0
  auto d = ranges.take(4 * SharedRanges::kAlign);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 0u);
  ranges.give(*c, 2 * SharedRanges::kAlign + 1);
  ranges.give(*d, 4 * SharedRanges::kAlign);
  EXPECT_EQ(ranges.free_bytes(), 10 * SharedRanges::kAlign);
  auto whole = ranges.take(10 * SharedRanges::kAlign);  // all merged back into one
  ASSERT_TRUE(whole);
  EXPECT_EQ(*whole, 0u);
}

TEST(SharedRanges, ThousandsOfRandomTakesAndGivesNeverOverlap) {
  constexpr uint64_t kPages = 256;
  SharedRanges ranges(kPages * SharedRanges::kAlign);
  std::mt19937 random(7);
  std::map<uint64_t, uint64_t> held;  // offset -> pages
  for (int step = 0; step < 20000; ++step) {
    if (!held.empty() && (random() % 2 == 0)) {
      auto it = std::next(held.begin(), static_cast<long>(random() % held.size()));
      ranges.give(it->first, it->second * SharedRanges::kAlign);
      held.erase(it);
      continue;
    }
    const uint64_t pages = 1 + random() % 16;
    auto offset = ranges.take(pages * SharedRanges::kAlign);
    if (!offset) continue;
    ASSERT_EQ(*offset % SharedRanges::kAlign, 0u);
    ASSERT_LE(*offset + pages * SharedRanges::kAlign, kPages * SharedRanges::kAlign);
    auto after = held.lower_bound(*offset);
    if (after != held.end()) {
      ASSERT_LE(*offset + pages * SharedRanges::kAlign, after->first);
    }
    if (after != held.begin()) {
      auto before = std::prev(after);
      ASSERT_LE(before->first + before->second * SharedRanges::kAlign, *offset);
    }
    held[*offset] = pages;
  }
  uint64_t in_use = 0;
  for (const auto& [offset, pages] : held) in_use += pages * SharedRanges::kAlign;
  EXPECT_EQ(ranges.free_bytes() + in_use, kPages * SharedRanges::kAlign);
}

// ---------------------------------------------------------------- the wire -----------

using wire::DType;
using wire::Incoming;
using wire::Outgoing;

wire::Frame frame_in(const std::shared_ptr<SharedMemory>& memory, uint64_t offset,
                     std::vector<int64_t> shape) {
  return wire::shared_frame(memory, offset, DType::kF16, std::move(shape));
}

TEST(SharedMemoryWire, FramesGoAsRangesOnlyWhenAskedAndArriveWithTheirBytes) {
  auto memory = SharedMemory::create(1 << 20);
  for (uint64_t i = 0; i < memory->size(); ++i) memory->data()[i] = static_cast<char>(i * 13);
  auto make = [&](bool ranges) {
    Outgoing out(9, 2);
    out.header().getBody().initLanguageTask();
    out.add_frame(frame_in(memory, 8192, {4, 8}));
    out.add_frame(DType::kF32, {2}, zmq::message_t(8));  // plain bytes
    out.add_frame(frame_in(memory, 65536, {16, 16}));
    if (ranges) out.send_shared_as_ranges();
    return out.parts();
  };
  auto plain = make(false);
  EXPECT_EQ(plain[1].size(), 64u);
  auto parts = make(true);
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[1].size(), 0u);  // no bytes on the wire for shared frames
  EXPECT_EQ(parts[2].size(), 8u);
  EXPECT_EQ(parts[3].size(), 0u);
  SharedMemoryMaps maps;
  Incoming in =
      Incoming::parse(std::move(parts), false, wire::Limits{}, wire::resolve_through(maps));
  EXPECT_EQ(std::string(in.header().getSharedMemory().cStr()), memory->path());
  ASSERT_EQ(in.frames().size(), 3u);
  EXPECT_EQ(in.frames()[0].bytes.size(), 64u);
  EXPECT_EQ(0, std::memcmp(in.frames()[0].bytes.data(), memory->data() + 8192, 64));
  EXPECT_EQ(0, std::memcmp(in.frames()[2].bytes.data(), memory->data() + 65536, 512));
  EXPECT_NE(in.frames()[0].bytes.data(), memory->data() + 8192) << "its own mapping";
  // Without a resolver, a frame in shared memory is a violation, not an empty payload.
  EXPECT_THROW(Incoming::parse(make(true), false, wire::Limits{}), WireError);
}

TEST(SharedMemoryWire, ALyingRangeIsRefusedWithTheRequestItCameWith) {
  auto memory = SharedMemory::create(1 << 16);
  SharedMemoryMaps maps;
  {  // a range past the file's end
    Outgoing lie(77, 1);
    lie.header().getBody().initLanguageTask();
    wire::Frame frame = frame_in(memory, 0, {4});
    frame.shared_offset = (1 << 16) - 4;  // declares 8 bytes from 4 before the end
    lie.add_frame(std::move(frame));
    lie.send_shared_as_ranges();
    try {
      Incoming::parse(lie.parts(), false, wire::Limits{}, wire::resolve_through(maps));
      FAIL() << "a range past the end was read";
    } catch (const SharedMemoryError& e) {
      EXPECT_EQ(e.request, 77u);
      EXPECT_EQ(e.attempt, 1u);
    }
  }
  {  // a frame in shared memory that carries bytes too
    Outgoing out(5);
    out.header().getBody().initLanguageTask();
    out.add_frame(frame_in(memory, 0, {4}));
    out.send_shared_as_ranges();
    auto parts = out.parts();
    parts[1] = zmq::message_t(8);
    EXPECT_THROW(
        Incoming::parse(std::move(parts), false, wire::Limits{}, wire::resolve_through(maps)),
        WireError);
  }
  {  // a range over the message size limit is refused before any mapping
    Outgoing out(5);
    out.header().getBody().initLanguageTask();
    out.add_frame(frame_in(memory, 0, {4096}));
    out.send_shared_as_ranges();
    wire::Limits small;
    small.max_message_bytes = 4096;
    bool resolved = false;
    wire::SharedResolver counting = [&](const schema::Header::Reader& h, uint64_t o, uint64_t b) {
      resolved = true;
      return wire::resolve_through(maps)(h, o, b);
    };
    EXPECT_THROW(Incoming::parse(out.parts(), false, small, counting), WireError);
    EXPECT_FALSE(resolved);
  }
}

}  // namespace
}  // namespace llava
