// How a ring's consumer waits for data, and how its producer wakes it.
//
// Wakeup suppression (the same for every blocking strategy): the consumer publishes
// `consumer_sleeping = 1`, issues a full fence and re-checks the ring before it blocks; the
// producer publishes its tail, issues a full fence and signals only if it sees the flag (and
// clears it with an exchange, so one sleep costs at most one signal). Either the consumer sees the
// new tail or the producer sees the flag: no wakeup is lost, and an awake consumer costs the
// producer no syscall.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "floe/ipc/fd.hpp"
#include "floe/ipc/result.hpp"

namespace floe::ipc {

enum class NotifyMode : std::uint32_t {
  kEventfd = 1,  // producer writes an eventfd; the consumer reads it (blocking, epoll or io_uring)
  kFutex = 2,    // FUTEX_WAIT/FUTEX_WAKE on a shared word in the ring header (not FUTEX_PRIVATE)
  kSpin = 3,     // the consumer never sleeps; it spins on the tail (burns a core, lowest latency)
  kPoll = 4,     // the consumer sleeps a fixed interval between checks; never signalled
};

[[nodiscard]] std::string_view to_string(NotifyMode mode) noexcept;
/// Parses "eventfd", "futex", "spin", "poll".
[[nodiscard]] std::optional<NotifyMode> parse_notify_mode(std::string_view text) noexcept;

/// An eventfd (EFD_CLOEXEC, optionally EFD_NONBLOCK).
[[nodiscard]] Result<Fd> make_eventfd(bool nonblocking = false);
/// Adds 1 to an eventfd's counter (write(2)); EAGAIN on a saturated counter is not an error.
void eventfd_signal(int fd) noexcept;
/// Reads and clears the counter; returns 0 on EAGAIN (non-blocking fd with nothing pending).
[[nodiscard]] Result<std::uint64_t> eventfd_drain(int fd);

/// FUTEX_WAIT on a word that may live in shared memory (no FUTEX_PRIVATE_FLAG). Returns when woken,
/// when `*word != expected`, on a signal or after `timeout`. Never an error for those cases.
void futex_wait(const std::uint32_t* word, std::uint32_t expected,
                std::optional<std::chrono::nanoseconds> timeout) noexcept;
/// FUTEX_WAKE up to `count` waiters on `word` (shared, not private). Returns how many woke.
int futex_wake(const std::uint32_t* word, int count) noexcept;

}  // namespace floe::ipc
