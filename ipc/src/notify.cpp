#include "floe/ipc/notify.hpp"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <ctime>

namespace floe::ipc {

std::string_view to_string(NotifyMode mode) noexcept {
  switch (mode) {
    case NotifyMode::kEventfd: return "eventfd";
    case NotifyMode::kFutex: return "futex";
    case NotifyMode::kSpin: return "spin";
    case NotifyMode::kPoll: return "poll";
  }
  return "unknown";
}

std::optional<NotifyMode> parse_notify_mode(std::string_view text) noexcept {
  for (const NotifyMode m : {NotifyMode::kEventfd, NotifyMode::kFutex, NotifyMode::kSpin, NotifyMode::kPoll}) {
    if (text == to_string(m)) return m;
  }
  return std::nullopt;
}

Result<Fd> make_eventfd(bool nonblocking) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
  if (fd < 0) return sys_error("eventfd");
  return Fd(fd);
}

Result<SignalPipe> make_signal_pipe() {
  int fds[2] = {-1, -1};
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return sys_error("pipe2");
  return SignalPipe{.read = Fd(fds[0]), .write = Fd(fds[1])};
}

void eventfd_signal(int fd) noexcept {
  const std::uint64_t one = 1;
  for (;;) {
    if (::write(fd, &one, sizeof one) >= 0) return;
    if (errno != EINTR) return;  // EAGAIN: a wakeup is pending; EPIPE: the reader is gone
  }
}

std::uint64_t signals_read(int fd, std::uint64_t first, std::size_t bytes, bool drain_rest) noexcept {
  // 8 bytes: an eventfd's counter (never 0) or one signal of a pipe (a peer may have written 0).
  if (bytes == sizeof(std::uint64_t)) return first != 0 ? first : 1;
  // A pipe: 8 bytes per signal (a hostile writer may leave a partial one: any byte counts).
  std::uint64_t n = (bytes + 7) / 8;
  if (!drain_rest) return n;
  // The peer may have written far more (a pipe can hold up to 1 MiB): empty it now, in big reads,
  // so that one write of its costs one wakeup here, not one per signal. At most one full pipe per
  // call: a peer that keeps refilling it from other threads must not keep the caller's loop here.
  // Whatever is left keeps the descriptor readable, so the loop comes back after serving the rest.
  std::array<std::byte, 16384> rest;
  for (std::size_t reads = 0; reads < kMaxSignalDrainReads;) {
    const ssize_t r = ::read(fd, rest.data(), rest.size());
    if (r < 0 && errno == EINTR) continue;
    ++reads;
    if (r > 0) n += (static_cast<std::uint64_t>(r) + 7) / 8;
    if (r != static_cast<ssize_t>(rest.size())) break;  // a short read, EAGAIN, or EOF (reported by the next read)
  }
  return n;
}

Result<std::uint64_t> eventfd_drain(int fd) {
  std::array<std::uint64_t, 8> buf{};
  for (;;) {
    const ssize_t r = ::read(fd, buf.data(), sizeof buf);
    if (r > 0) {
      // Only a full buffer may leave more behind (an eventfd reads as 8 bytes).
      const bool full = r == static_cast<ssize_t>(sizeof buf);
      return signals_read(fd, buf[0], static_cast<std::size_t>(r), full && (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    }
    if (r == 0) return sys_error("read(signal pipe)", EPIPE, "the writer closed its end");
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return 0;
    return sys_error("read(eventfd or signal pipe)");
  }
}

void futex_wait(const std::uint32_t* word, std::uint32_t expected,
                std::optional<std::chrono::nanoseconds> timeout) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout) {
    const auto ns = timeout->count() > 0 ? timeout->count() : 0;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    tsp = &ts;
  }
  // FUTEX_WAIT (not FUTEX_WAIT_PRIVATE): the word lives in memory shared across processes, so the
  // kernel must key the wait queue on the page, not on this process's mm. The timeout is relative.
  // EAGAIN (value changed), EINTR and ETIMEDOUT all mean "go and look again" to the caller.
  (void)::syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, nullptr, 0);
}

int futex_wake(const std::uint32_t* word, int count) noexcept {
  const long woken = ::syscall(SYS_futex, word, FUTEX_WAKE, count, nullptr, nullptr, 0);
  return woken < 0 ? 0 : static_cast<int>(woken);
}

}  // namespace floe::ipc
