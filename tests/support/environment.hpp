// Knobs shared by the test suites.
#pragma once

#include <cstddef>
#include <cstdint>

namespace floe::test {

/// Multiplier for stress-test iteration counts, from FLOE_STRESS_SCALE (default 1.0). The
/// sanitizer pass lowers it because TSan slows code 5-15x; a soak raises it.
double stress_scale();
/// `n * stress_scale()`, at least `minimum`.
std::uint64_t scaled(std::uint64_t n, std::uint64_t minimum = 1);

/// Number of open fds of this process (entries of /proc/self/fd, minus the one used to list it).
std::size_t count_open_fds();

}  // namespace floe::test
