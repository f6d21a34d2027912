#include "floe/sdk/backoff.hpp"

#include <gtest/gtest.h>

namespace floe::sdk {
namespace {

using std::chrono::milliseconds;

TEST(Backoff, DoublesFromMinUpToMaxAndStaysThere) {
  Backoff b(milliseconds(100), milliseconds(1000));
  EXPECT_EQ(b.next(), milliseconds(100));
  EXPECT_EQ(b.next(), milliseconds(200));
  EXPECT_EQ(b.next(), milliseconds(400));
  EXPECT_EQ(b.next(), milliseconds(800));
  EXPECT_EQ(b.next(), milliseconds(1000));
  EXPECT_EQ(b.next(), milliseconds(1000));
}

TEST(Backoff, ResetStartsOverAndSaturateJumpsToMax) {
  Backoff b(milliseconds(50), milliseconds(5000));
  (void)b.next();
  (void)b.next();
  b.reset();
  EXPECT_EQ(b.next(), milliseconds(50));
  b.saturate();
  EXPECT_EQ(b.next(), milliseconds(5000));
  EXPECT_EQ(b.next(), milliseconds(5000));
}

TEST(Backoff, DegenerateBoundsAreRepaired) {
  Backoff zero(milliseconds(0), milliseconds(0));
  EXPECT_EQ(zero.next(), milliseconds(1));
  EXPECT_EQ(zero.next(), milliseconds(1));
  Backoff inverted(milliseconds(300), milliseconds(100));
  EXPECT_EQ(inverted.max(), milliseconds(300));
  EXPECT_EQ(inverted.next(), milliseconds(300));
}

}  // namespace
}  // namespace floe::sdk
