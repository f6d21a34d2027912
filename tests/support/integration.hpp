// Helpers shared by the integration tests (real processes, real sockets): polling for a condition
// with a hang guard, reading a log, counting a process's fds and mappings, and a unique temporary
// directory. Nothing here waits on a timing threshold: bounds only stop a hang.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <span>
#include <string>

namespace floe::test {

/// Hang guard for one awaited condition: sanitizer builds start programs several times slower.
inline constexpr std::chrono::milliseconds kHangGuard{60'000};

/// Polls `done` every `step` until it returns true or `bound` passes; returns its last answer.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds bound = kHangGuard,
                std::chrono::milliseconds step = std::chrono::milliseconds{20});

/// Waits (poll, EINTR retried) until `fd` is readable; false on timeout or error.
bool wait_readable(int fd, std::chrono::milliseconds timeout = kHangGuard);

/// Sends one packet of `bytes` (may be empty) with `fds` attached (SCM_RIGHTS, any number up to
/// the kernel's), as a hostile or buggy peer could; true if the packet went out whole (errno
/// says why not).
bool send_packet(int socket, std::span<const std::byte> bytes, std::span<const int> fds = {});

/// The whole file (empty if it cannot be read).
std::string slurp(const std::string& path);

/// Entries of /proc/PID/fd (0 if the process is gone).
std::size_t count_fds(pid_t pid);
/// Lines of /proc/PID/maps (0 if the process is gone).
std::size_t count_maps(pid_t pid);
/// Lines of /proc/PID/maps that map a memfd ("/memfd:" in the path column).
std::size_t count_memfd_maps(pid_t pid);

/// A fresh directory under /tmp (mkdtemp), removed with its contents on destruction unless
/// `keep()` was called (e.g. to leave logs behind after a failure).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "floe-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  void keep() { keep_ = true; }

 private:
  std::string path_;
  bool keep_ = false;
};

}  // namespace floe::test
