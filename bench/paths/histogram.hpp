// A log-bucketed latency histogram: values below 64 ns exact, above that 32 buckets per power of
// two (each bucket at most ~3% wide), the maximum kept exactly. Fixed size, no allocation on
// record(), mergeable; percentiles report the upper edge of the bucket they fall in.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <utility>
#include <vector>

namespace floe::bench::paths {

class LogHistogram {
 public:
  static constexpr int kSubBits = 5;                       // 32 sub-buckets per octave
  static constexpr std::uint64_t kSub = 1u << kSubBits;
  static constexpr std::size_t kBuckets = 2 * kSub + (64 - kSubBits - 1) * kSub;

  void record(std::int64_t ns) noexcept {
    const std::uint64_t v = ns < 0 ? 0 : static_cast<std::uint64_t>(ns);
    ++counts_[index(v)];
    ++total_;
    if (v > max_) max_ = v;
  }
  void merge(const LogHistogram& other) noexcept {
    for (std::size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    total_ += other.total_;
    if (other.max_ > max_) max_ = other.max_;
  }

  [[nodiscard]] std::uint64_t count() const noexcept { return total_; }
  [[nodiscard]] std::int64_t max() const noexcept { return static_cast<std::int64_t>(max_); }

  /// Smallest bucket edge with at least q of the samples at or below it (q in (0, 1]); the exact
  /// maximum for q == 1; 0 when empty.
  [[nodiscard]] std::int64_t percentile(double q) const noexcept {
    if (total_ == 0) return 0;
    if (q >= 1.0) return max();
    const auto need = static_cast<std::uint64_t>(q * static_cast<double>(total_) + 0.999999);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= need && counts_[i] != 0) {
        const std::uint64_t hi = upper(i);
        return static_cast<std::int64_t>(hi < max_ ? hi : max_);
      }
    }
    return max();
  }

  /// (upper edge in ns, fraction of samples at or below it) for every non-empty bucket.
  [[nodiscard]] std::vector<std::pair<std::int64_t, double>> cdf() const {
    std::vector<std::pair<std::int64_t, double>> out;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      if (counts_[i] == 0) continue;
      seen += counts_[i];
      const std::uint64_t hi = upper(i);
      out.emplace_back(static_cast<std::int64_t>(hi < max_ ? hi : max_),
                       static_cast<double>(seen) / static_cast<double>(total_));
    }
    return out;
  }

 private:
  static std::size_t index(std::uint64_t v) noexcept {
    if (v < 2 * kSub) return static_cast<std::size_t>(v);
    const int msb = 63 - std::countl_zero(v);        // >= kSubBits + 1
    const int shift = msb - kSubBits;                // >= 1
    const std::uint64_t mant = v >> shift;           // in [kSub, 2 kSub)
    return static_cast<std::size_t>(2 * kSub + static_cast<std::uint64_t>(shift - 1) * kSub + (mant - kSub));
  }
  static std::uint64_t upper(std::size_t i) noexcept {
    if (i < 2 * kSub) return i;
    const std::uint64_t k = i - 2 * kSub;
    const int shift = static_cast<int>(k / kSub) + 1;
    const std::uint64_t mant = kSub + k % kSub;
    return ((mant + 1) << shift) - 1;
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t total_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace floe::bench::paths
