// Internal to floe::ipc: the backend constructors behind EventLoop::create, and helpers both share.
#pragma once

#include <chrono>
#include <memory>

#include "floe/ipc/event_loop.hpp"

namespace floe::ipc::detail {

/// io_uring backend; an Error if io_uring_queue_init fails or the kernel lacks an opcode we need.
[[nodiscard]] Result<std::unique_ptr<EventLoop>> make_uring_loop(const LoopOptions& options);
/// epoll backend.
[[nodiscard]] Result<std::unique_ptr<EventLoop>> make_epoll_loop(const LoopOptions& options);

/// Adds 1 to an eventfd with write(2) only: async-signal-safe, errno preserved. A saturated counter
/// (EAGAIN) already guarantees a wakeup, so failures are ignored.
void wake_eventfd(int fd) noexcept;

/// A timer delay as the kernel wants it: negative delays become zero.
[[nodiscard]] inline std::chrono::nanoseconds clamp_delay(std::chrono::nanoseconds delay) noexcept {
  return delay.count() < 0 ? std::chrono::nanoseconds{0} : delay;
}

}  // namespace floe::ipc::detail
