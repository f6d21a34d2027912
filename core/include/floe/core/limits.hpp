// Rate limiting for floe-core's per-peer limits (docs/CORE.md, [limits]).
//
//   TokenBucket b(1000, 5000, steady_clock::now());   // 1000 per second, bursts of up to 5000
//   if (!b.try_take(steady_clock::now())) refuse();
//
// The clock is passed in, never read inside, so tests drive it with any time points they like.
#pragma once

#include <chrono>

namespace floe::core {

/// A token bucket: holds at most `burst` tokens, starts full, gains `rate` tokens per second of
/// the times passed to try_take(). Not thread-safe (one per peer session, used by its thread).
class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  TokenBucket(double rate_per_second, double burst, Clock::time_point now) noexcept;

  /// Refills for the time since the previous call and takes one token if there is one. A time
  /// earlier than the previous one refills nothing (and is not remembered).
  [[nodiscard]] bool try_take(Clock::time_point now) noexcept;
  /// Tokens left after the last try_take (fractions of a token included).
  [[nodiscard]] double tokens() const noexcept { return tokens_; }

 private:
  double rate_;
  double burst_;
  double tokens_;
  Clock::time_point last_;
};

}  // namespace floe::core
