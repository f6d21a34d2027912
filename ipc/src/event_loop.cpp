// EventLoop::create (backend choice and fallback), names of backends, shared helpers.
#include "floe/ipc/event_loop.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

#include "event_loop_impl.hpp"

namespace floe::ipc {

std::string_view to_string(LoopBackend backend) noexcept {
  switch (backend) {
    case LoopBackend::kAuto:
      return "auto";
    case LoopBackend::kIoUring:
      return "io_uring";
    case LoopBackend::kEpoll:
      return "epoll";
  }
  return "unknown";
}

std::optional<LoopBackend> parse_loop_backend(std::string_view text) noexcept {
  if (text == "auto") return LoopBackend::kAuto;
  if (text == "io_uring" || text == "uring") return LoopBackend::kIoUring;
  if (text == "epoll") return LoopBackend::kEpoll;
  return std::nullopt;
}

Result<std::unique_ptr<EventLoop>> EventLoop::create(const LoopOptions& options) {
  LoopBackend backend = options.backend;
  if (backend == LoopBackend::kAuto) {
    if (const char* env = std::getenv("FLOE_LOOP_BACKEND"); env != nullptr && *env != '\0') {
      if (const auto parsed = parse_loop_backend(env)) {
        backend = *parsed;
      } else {
        spdlog::warn("ignoring FLOE_LOOP_BACKEND='{}' (expected auto, io_uring or epoll)", env);
      }
    }
  }
  switch (backend) {
    case LoopBackend::kIoUring:
      return detail::make_uring_loop(options);
    case LoopBackend::kEpoll:
      return detail::make_epoll_loop(options);
    case LoopBackend::kAuto:
      break;
  }
  auto uring = detail::make_uring_loop(options);
  if (uring) return uring;
  const Error& why = uring.error();
  spdlog::warn("io_uring unavailable ({}: {}); using epoll", why.operation,
               why.code != 0 ? std::strerror(why.code) : why.message);
  return detail::make_epoll_loop(options);
}

namespace detail {

void wake_eventfd(int fd) noexcept {
  const int saved = errno;
  const std::uint64_t one = 1;
  // A short or failed write leaves nothing to undo: EAGAIN means the counter is already non-zero.
  [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof one);
  errno = saved;
}

}  // namespace detail
}  // namespace floe::ipc
