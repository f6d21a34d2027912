#include "floe/core/limits.hpp"

#include <algorithm>

namespace floe::core {

TokenBucket::TokenBucket(double rate_per_second, double burst, Clock::time_point now) noexcept
    : rate_(rate_per_second), burst_(std::max(burst, 1.0)), tokens_(burst_), last_(now) {}

bool TokenBucket::try_take(Clock::time_point now) noexcept {
  if (now > last_) {
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_, tokens_ + elapsed * rate_);
    last_ = now;
  }
  // The tolerance keeps a sender at exactly the rate from losing a token to rounding.
  if (tokens_ < 1.0 - 1e-9) return false;
  tokens_ = std::max(0.0, tokens_ - 1.0);
  return true;
}

}  // namespace floe::core
