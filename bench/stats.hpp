// Latency percentiles from every recorded sample (no histogram: the vector is sorted once).
#pragma once

#include <cstdint>
#include <vector>

namespace floe::bench {

struct LatencySummary {
  std::uint64_t count = 0;
  std::int64_t min_ns = 0;
  std::int64_t p50_ns = 0;
  std::int64_t p99_ns = 0;
  std::int64_t p999_ns = 0;
  std::int64_t max_ns = 0;
  double mean_ns = 0;
};

/// Nearest-rank percentile (the smallest sample with at least q of all samples at or below it) of
/// an ascending `sorted` vector; q in (0, 1].
[[nodiscard]] std::int64_t percentile(const std::vector<std::int64_t>& sorted, double q) noexcept;

/// Sorts `samples` in place and summarises them. An empty vector gives an all-zero summary.
[[nodiscard]] LatencySummary summarize(std::vector<std::int64_t>& samples);

}  // namespace floe::bench
