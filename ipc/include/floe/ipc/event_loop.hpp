// EventLoop: one thread's wait for readable fds, eventfds and timers.
//
// Two backends behind one interface: io_uring (liburing 2.3 API; the default) and epoll, for
// kernels and container runtimes where io_uring is missing or disabled. Backend kAuto tries
// io_uring and falls back to epoll with one log line saying why. One conformance suite
// (tests/ipc/test_event_loop.cpp) runs against both.
//
// Environment: FLOE_LOOP_BACKEND=auto|io_uring|epoll replaces kAuto (only kAuto: an explicitly
// requested backend wins), e.g. to force epoll in a container whose seccomp profile lets
// io_uring_setup succeed but breaks it later. A forced io_uring that fails is an error, not a
// fallback. Unknown values are ignored with a warning.
//
// Watches are level-triggered on both backends. Repeating timers keep their phase (deadline +=
// period, no drift); periods missed while the loop was busy coalesce into one call.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "floe/ipc/result.hpp"

namespace floe::ipc {

enum class LoopBackend { kAuto, kIoUring, kEpoll };
[[nodiscard]] std::string_view to_string(LoopBackend backend) noexcept;
/// Parses "auto", "io_uring" (or "uring"), "epoll".
[[nodiscard]] std::optional<LoopBackend> parse_loop_backend(std::string_view text) noexcept;

struct LoopOptions {
  LoopBackend backend = LoopBackend::kAuto;
  unsigned queue_depth = 256;  // io_uring submission queue entries
};

using WatchId = std::uint64_t;

/// All methods except stop() and wake() must be called on the loop's thread (the one inside run()
/// or run_once()), or before the loop runs. Callbacks run on that thread and may add or cancel
/// watches, including their own.
class EventLoop {
 public:
  [[nodiscard]] static Result<std::unique_ptr<EventLoop>> create(const LoopOptions& options = {});
  virtual ~EventLoop() = default;

  [[nodiscard]] virtual LoopBackend backend() const noexcept = 0;

  /// Calls `callback` every time `fd` is readable, until cancelled. The callback must consume the
  /// readiness (read the data) or it is called again.
  [[nodiscard]] virtual Result<WatchId> watch_readable(int fd, std::function<void()> callback) = 0;
  /// For eventfds and the read ends of signal pipes (notify.hpp): reads the counter or a signal for
  /// you (io_uring: a read op on a blocking fd, a poll then read(2) on a non-blocking one; epoll:
  /// read(2) on readiness) and passes the value. The fd should be non-blocking for the epoll
  /// backend; the io_uring backend accepts either, as it was when watched: do not clear or set
  /// O_NONBLOCK while it is watched (a read(2) after a poll would block the loop if a rival
  /// reader emptied it). A pipe whose writer has closed its end ends the watch (quietly: the
  /// peer left).
  [[nodiscard]] virtual Result<WatchId> watch_eventfd(int fd,
                                                      std::function<void(std::uint64_t)> callback) = 0;
  /// Calls `callback` after `delay`, and then every `delay` if `repeat`.
  [[nodiscard]] virtual Result<WatchId> add_timer(std::chrono::nanoseconds delay, bool repeat,
                                                  std::function<void()> callback) = 0;
  /// Stops a watch or timer; its callback is never called after cancel() returns. Cancelling an
  /// unknown or already finished id is not an error. Cancel a watch before closing its fd: the
  /// io_uring backend may still hold the file open, and a counter the kernel already read for a
  /// cancelled eventfd watch is dropped.
  virtual void cancel(WatchId id) noexcept = 0;

  /// Runs until stop(). Returns an error only if the kernel interface fails.
  [[nodiscard]] virtual Status run() = 0;
  /// Waits up to `timeout` (nullopt: until something happens; zero: don't wait), dispatches every
  /// ready callback and returns how many ran.
  [[nodiscard]] virtual Result<std::size_t> run_once(std::optional<std::chrono::nanoseconds> timeout) = 0;
  /// Any thread, async-signal-safe: makes run() return after the current iteration.
  virtual void stop() noexcept = 0;
  /// Any thread: interrupts a blocking wait so run()/run_once() return to the caller's loop.
  virtual void wake() noexcept = 0;
};

}  // namespace floe::ipc
