#include "common/units.h"

#include <gtest/gtest.h>

using llava::parse_bytes;
using llava::parse_millis;

TEST(Units, ParsesBinaryAndDecimalSizes) {
  EXPECT_EQ(parse_bytes("22GiB"), 22ull << 30);
  EXPECT_EQ(parse_bytes("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_bytes("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parse_bytes("2GB"), 2000000000ull);
  EXPECT_EQ(parse_bytes("4096"), 4096ull);
  EXPECT_EQ(parse_bytes(" 8 KiB "), 8192ull);
}

TEST(Units, RejectsMalformedSizes) {
  for (const char* bad : {"", "GiB", "22 gib", "22GiBs", "-1GiB", "1e3", "abc", "1..2GB"}) {
    EXPECT_FALSE(parse_bytes(bad).has_value()) << bad;
  }
}

TEST(Units, ParsesDurations) {
  EXPECT_EQ(parse_millis("500ms"), 500u);
  EXPECT_EQ(parse_millis("2s"), 2000u);
  EXPECT_EQ(parse_millis("1.5s"), 1500u);
  EXPECT_EQ(parse_millis("1m"), 60000u);
  EXPECT_EQ(parse_millis("250"), 250u);
  EXPECT_FALSE(parse_millis("2h").has_value());
}

TEST(Units, FormatsSizesAndDurations) {
  EXPECT_EQ(llava::format_bytes(22ull << 30), "22.00 GiB");
  EXPECT_EQ(llava::format_bytes(512ull << 20), "512.0 MiB");
  EXPECT_EQ(llava::format_bytes(17), "17 B");
  EXPECT_EQ(llava::format_millis(120000), "2 min");
  EXPECT_EQ(llava::format_millis(90000), "90 s");
  EXPECT_EQ(llava::format_millis(1500), "1.5 s");
  EXPECT_EQ(llava::format_millis(300), "300 ms");
}
