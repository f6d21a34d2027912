// Backoff: the reconnect schedule of a Provider (exponential, capped, no jitter).
#pragma once

#include <chrono>

namespace floe::sdk {

/// Delays min, 2·min, 4·min, ... capped at max. Not thread-safe (one per provider, loop thread).
class Backoff {
 public:
  /// `max` below `min` is raised to `min`; a zero `min` counts as 1 ms.
  Backoff(std::chrono::milliseconds min, std::chrono::milliseconds max) noexcept
      : min_(min.count() > 0 ? min : std::chrono::milliseconds(1)), max_(max < min_ ? min_ : max), next_(min_) {}

  /// The delay before the next attempt; doubles the one after it (up to max).
  [[nodiscard]] std::chrono::milliseconds next() noexcept {
    const auto d = next_;
    next_ = next_ >= max_ / 2 ? max_ : next_ * 2;
    return d;
  }
  /// Back to `min` (after a connection the core accepted).
  void reset() noexcept { next_ = min_; }
  /// Straight to `max` (the core refused us: no point in hurrying).
  void saturate() noexcept { next_ = max_; }

  [[nodiscard]] std::chrono::milliseconds min() const noexcept { return min_; }
  [[nodiscard]] std::chrono::milliseconds max() const noexcept { return max_; }

 private:
  std::chrono::milliseconds min_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds next_;
};

}  // namespace floe::sdk
