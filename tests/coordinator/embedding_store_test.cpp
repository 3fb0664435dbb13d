#include "coordinator/embedding_store.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

namespace {

std::vector<llava::wire::Frame> frames(int count, int64_t tokens, uint8_t fill) {
  std::vector<llava::wire::Frame> out;
  for (int i = 0; i < count; ++i) {
    llava::wire::Frame f;
    f.dtype = llava::wire::DType::kF16;
    f.shape = {tokens, 8};
    f.bytes = zmq::message_t(static_cast<size_t>(tokens * 8 * 2));
    std::memset(f.bytes.data(), fill + i, f.bytes.size());
    out.push_back(std::move(f));
  }
  return out;
}

size_t files_in(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    n += e.path().filename().string().rfind("llava-pipe-embeddings-", 0) == 0;
  }
  return n;
}

TEST(EmbeddingStore, SharesPayloadsWithoutCopying) {
  llava::EmbeddingStore store(1 << 20, testing::TempDir());
  auto original = frames(2, 16, 1);
  const void* payload = original[1].bytes.data();
  store.put(7, std::move(original));
  auto shared = store.share(7);
  ASSERT_EQ(shared.size(), 2u);
  EXPECT_EQ(shared[1].bytes.data(), payload);  // the same bytes, reference-counted
  EXPECT_EQ(store.bytes_in_memory(), 2u * 16 * 8 * 2);
  store.erase(7);
  EXPECT_EQ(store.bytes_in_memory(), 0u);
}

TEST(EmbeddingStore, SpillsPastItsBoundAndReadsBack) {
  const std::string dir = testing::TempDir() + "spill-test";
  std::filesystem::create_directories(dir);
  {
    llava::EmbeddingStore store(600, dir);  // frames are 256 bytes: room for two
    store.put(1, frames(1, 16, 10));
    store.put(2, frames(2, 16, 20));  // over the bound: to disk
    EXPECT_EQ(store.spilled(), 1u);
    EXPECT_EQ(store.bytes_in_memory(), 256u);
    EXPECT_EQ(files_in(dir), 1u);
    auto back = store.share(2);
    ASSERT_EQ(back.size(), 2u);
    EXPECT_EQ(back[1].shape, (std::vector<int64_t>{16, 8}));
    for (size_t i = 0; i < back[1].bytes.size(); ++i) {
      ASSERT_EQ(static_cast<uint8_t*>(back[1].bytes.data())[i], 21) << i;
    }
    store.erase(2);
    EXPECT_EQ(files_in(dir), 0u);
    store.put(3, frames(2, 16, 30));
    EXPECT_EQ(files_in(dir), 1u);
  }
  EXPECT_EQ(files_in(dir), 0u);  // nothing left behind
}

// Images are keyed by their whole bytes: an image that differs in its last byte is another.
TEST(EmbeddingCache, FindsOnlyWhenEveryImageIsHereAndSharesPayloads) {
  llava::EmbeddingCache cache(1 << 20);
  const std::string a(1000, 'a'), b = a.substr(0, 999) + "b";
  auto encoded = frames(2, 16, 1);
  cache.put({a, b}, encoded);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 2u * (16 * 8 * 2 + 1000));
  auto found = cache.find({b, a, b});
  ASSERT_TRUE(found);
  ASSERT_EQ(found->size(), 3u);
  EXPECT_EQ((*found)[0].bytes.data(), encoded[1].bytes.data());  // shared, not copied
  EXPECT_EQ((*found)[1].bytes.data(), encoded[0].bytes.data());
  EXPECT_EQ((*found)[1].shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ((*found)[1].dtype, llava::wire::DType::kF16);
  EXPECT_FALSE(cache.find({a, a.substr(0, 999) + "c"}));  // one image not seen: no frames
  EXPECT_FALSE(cache.find({a.substr(0, 999)}));
}

TEST(EmbeddingCache, EvictsTheLeastRecentlyUsedPastItsBound) {
  const uint64_t entry = 16 * 8 * 2 + 3;  // payload + 3-byte key
  llava::EmbeddingCache cache(2 * entry);
  auto one = frames(1, 16, 1), two = frames(1, 16, 2), three = frames(1, 16, 3);
  cache.put({"one"}, one);
  cache.put({"two"}, two);
  ASSERT_TRUE(cache.find({"one"}));  // "two" is now the least recently used
  cache.put({"thr"}, three);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_LE(cache.bytes(), 2 * entry);
  EXPECT_TRUE(cache.find({"one"}));
  EXPECT_FALSE(cache.find({"two"}));
  auto back = cache.find({"thr"});
  ASSERT_TRUE(back);
  EXPECT_EQ(static_cast<uint8_t*>((*back)[0].bytes.data())[0], 3);
}

TEST(EmbeddingCache, KeepsNothingLargerThanItsBound) {
  llava::EmbeddingCache off(0);
  auto encoded = frames(1, 16, 1);
  off.put({"image"}, encoded);
  EXPECT_EQ(off.size(), 0u);
  EXPECT_FALSE(off.find({"image"}));
  llava::EmbeddingCache small(100);  // one entry is 261 bytes
  small.put({"image"}, encoded);
  EXPECT_EQ(small.size(), 0u);
  EXPECT_EQ(small.bytes(), 0u);
}

}  // namespace
