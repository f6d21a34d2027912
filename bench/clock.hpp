// Clocks the benchmarks read: wall time (CLOCK_MONOTONIC through the vDSO, no rdtsc) and the CPU
// time of the calling process (getrusage, user + system, all threads).
#pragma once

#include <sys/resource.h>
#include <time.h>

#include <cstdint>

namespace floe::bench {

/// CLOCK_MONOTONIC in nanoseconds; comparable across processes of one machine.
[[nodiscard]] inline std::int64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// ru_utime + ru_stime of RUSAGE_SELF (every thread of this process) in nanoseconds.
[[nodiscard]] inline std::int64_t process_cpu_ns() noexcept {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  const auto tv_ns = [](const timeval& tv) {
    return static_cast<std::int64_t>(tv.tv_sec) * 1'000'000'000 + static_cast<std::int64_t>(tv.tv_usec) * 1000;
  };
  return tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime);
}

}  // namespace floe::bench
