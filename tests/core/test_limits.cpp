// TokenBucket driven by an injected clock: no sleeping, no timing thresholds.
#include <gtest/gtest.h>

#include <chrono>

#include "floe/core/limits.hpp"

namespace floe::core {
namespace {

using namespace std::chrono_literals;
using Clock = TokenBucket::Clock;

const Clock::time_point kT0{std::chrono::seconds(1000)};

int take_all(TokenBucket& b, Clock::time_point now) {
  int n = 0;
  while (b.try_take(now)) ++n;
  return n;
}

TEST(TokenBucket, StartsFullWithTheBurst) {
  TokenBucket b(10, 5, kT0);
  EXPECT_EQ(take_all(b, kT0), 5);
  EXPECT_FALSE(b.try_take(kT0));
}

TEST(TokenBucket, RefillsAtTheRate) {
  TokenBucket b(4, 8, kT0);
  ASSERT_EQ(take_all(b, kT0), 8);
  EXPECT_FALSE(b.try_take(kT0 + 200ms));  // 0.8 of a token
  EXPECT_TRUE(b.try_take(kT0 + 250ms));   // one token after 1/4 s
  EXPECT_FALSE(b.try_take(kT0 + 250ms));
  EXPECT_EQ(take_all(b, kT0 + 1250ms), 4);  // one second later: four more
}

TEST(TokenBucket, NeverHoldsMoreThanTheBurst) {
  TokenBucket b(1000, 3, kT0);
  ASSERT_EQ(take_all(b, kT0), 3);
  EXPECT_EQ(take_all(b, kT0 + std::chrono::hours(24)), 3);
}

TEST(TokenBucket, ASteadyRateAtTheLimitIsNeverRefused) {
  TokenBucket b(100, 1, kT0);
  for (int i = 1; i <= 1000; ++i) {
    ASSERT_TRUE(b.try_take(kT0 + std::chrono::milliseconds(10 * i))) << "message " << i;
  }
}

TEST(TokenBucket, AFasterSenderIsRefusedOnceTheBurstIsSpent) {
  TokenBucket b(100, 50, kT0);
  int taken = 0;
  // 200 messages per second for two seconds: 50 (burst) + 200 (refill) get through.
  for (int i = 0; i < 400; ++i) taken += b.try_take(kT0 + std::chrono::milliseconds(5 * i)) ? 1 : 0;
  EXPECT_GE(taken, 248);
  EXPECT_LE(taken, 250);
}

TEST(TokenBucket, ATimeGoingBackwardsRefillsNothing) {
  TokenBucket b(10, 2, kT0);
  ASSERT_EQ(take_all(b, kT0), 2);
  EXPECT_FALSE(b.try_take(kT0 - 10s));
  EXPECT_FALSE(b.try_take(kT0));          // the earlier time was not remembered
  EXPECT_TRUE(b.try_take(kT0 + 100ms));   // refilled from kT0, not from kT0 - 10 s
  EXPECT_FALSE(b.try_take(kT0 + 100ms));
}

}  // namespace
}  // namespace floe::core
