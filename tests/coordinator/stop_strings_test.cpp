#include "coordinator/stop_strings.h"

#include <gtest/gtest.h>

namespace {

using llava::StopStrings;

// Streams `pieces` through `stops`; returns what went out, "|" between pushes.
std::string stream(StopStrings& stops, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& piece : pieces) out += stops.push(piece) + "|";
  return out + stops.finish();
}

TEST(StopStrings, WithoutStopsEverythingGoesOutAtOnce) {
  StopStrings none;
  EXPECT_EQ(stream(none, {"Hello", ", ", "world"}), "Hello|, |world|");
  EXPECT_FALSE(none.stopped());
  EXPECT_EQ(none.text(), "Hello, world");
}

TEST(StopStrings, TextEndsBeforeAStopStringThatSpansPieces) {
  StopStrings stops({"USER:"});
  // "US" could begin the stop string: held back until "ER:" settles it.
  EXPECT_EQ(stream(stops, {"The cat. US", "ER: more", " never seen"}), "The cat. |||");
  EXPECT_TRUE(stops.stopped());
  EXPECT_EQ(stops.text(), "The cat. ");
}

TEST(StopStrings, HeldBackTextGoesOutWhenItTurnsOutNotToBeAStop) {
  StopStrings stops({"\n\n"});
  EXPECT_EQ(stream(stops, {"a\n", "b\n", "c"}), "a|\nb|\nc|");
  EXPECT_FALSE(stops.stopped());
  StopStrings ending({"\n\n"});
  EXPECT_EQ(stream(ending, {"a\n"}), "a|\n");  // the end of generation releases it
}

TEST(StopStrings, TheEarliestOfSeveralStopsWins) {
  StopStrings stops({"world", "lo, w"});
  EXPECT_EQ(stream(stops, {"Hello, world"}), "|Hel");  // the cut text comes with finish()
  EXPECT_EQ(stops.text(), "Hel");
  StopStrings inside({"abc", "b"});  // "abc" starts first
  EXPECT_EQ(stream(inside, {"xa", "bc"}), "x||");
  EXPECT_EQ(inside.text(), "x");
}

TEST(StopStrings, AStopAtTheVeryStartLeavesNoText) {
  StopStrings stops({"###"});
  EXPECT_EQ(stream(stops, {"#", "##", "after"}), "|||");
  EXPECT_TRUE(stops.stopped());
  EXPECT_EQ(stops.text(), "");
}

TEST(StopStrings, MultiByteTextIsCutOnlyAtTheStop) {
  StopStrings stops({"。"});  // 3 bytes in UTF-8
  EXPECT_EQ(stream(stops, {"日本", "語。", "次"}), "日本|||語");
  EXPECT_EQ(stops.text(), "日本語");
}

// min_tokens: a stop string that ends within the protected text is no stop; one that
// ends past it is, even if it began inside.
TEST(StopStrings, NoStopEndsWithinTheProtectedText) {
  StopStrings stops({"ab"});
  stops.protect(4);
  EXPECT_EQ(stream(stops, {"xab", "ab", "ab"}), "xab|||");  // the second "ab" ends at byte 5
  EXPECT_TRUE(stops.stopped());
  EXPECT_EQ(stops.text(), "xab");
  StopStrings spanning({"ab"});
  spanning.protect(4);
  EXPECT_EQ(stream(spanning, {"xxa", "b"}), "xx|ab|");  // ends at byte 4: within
  EXPECT_FALSE(spanning.stopped());
  EXPECT_EQ(spanning.text(), "xxab");
}

}  // namespace
