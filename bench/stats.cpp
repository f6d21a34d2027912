#include "stats.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace floe::bench {

std::int64_t percentile(const std::vector<std::int64_t>& sorted, double q) noexcept {
  if (sorted.empty()) return 0;
  const auto n = static_cast<double>(sorted.size());
  auto rank = static_cast<std::size_t>(std::ceil(q * n));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

LatencySummary summarize(std::vector<std::int64_t>& samples) {
  LatencySummary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = samples.size();
  s.min_ns = samples.front();
  s.p50_ns = percentile(samples, 0.50);
  s.p99_ns = percentile(samples, 0.99);
  s.p999_ns = percentile(samples, 0.999);
  s.max_ns = samples.back();
  // Long double: 1e6 samples of ~1e5 ns would still fit a double, but the sum costs nothing here.
  const long double sum = std::accumulate(samples.begin(), samples.end(), 0.0L);
  s.mean_ns = static_cast<double>(sum / static_cast<long double>(samples.size()));
  return s;
}

}  // namespace floe::bench
