#include "support/environment.hpp"

#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace floe::test {

double stress_scale() {
  static const double scale = [] {
    const char* s = std::getenv("FLOE_STRESS_SCALE");
    if (s == nullptr) return 1.0;
    const double v = std::strtod(s, nullptr);
    return v > 0 ? v : 1.0;
  }();
  return scale;
}

std::uint64_t scaled(std::uint64_t n, std::uint64_t minimum) {
  return std::max<std::uint64_t>(minimum, static_cast<std::uint64_t>(static_cast<double>(n) * stress_scale()));
}

std::size_t count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  std::size_t n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory stream's own fd
}

}  // namespace floe::test
