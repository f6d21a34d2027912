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

/// An eventfd (EFD_CLOEXEC, optionally EFD_NONBLOCK): a wakeup within one process.
[[nodiscard]] Result<Fd> make_eventfd(bool nonblocking = false);

/// A wakeup between two processes that need not trust each other: a pipe, both ends O_CLOEXEC and
/// O_NONBLOCK; the signalling side keeps `write`, the waiting side `read`. An eventfd is one open
/// file description that both holders share, so either of them can clear O_NONBLOCK (F_SETFL) and
/// fill the counter, and the other's next write(2) then blocks for good. Each end of a pipe is a
/// description of its own: what the peer does to its end never makes ours block. A full pipe (the
/// reader stopped reading) means a wakeup is pending anyway. Writing to a pipe whose reader is gone
/// raises SIGPIPE: a process that signals through one ignores SIGPIPE (floe-core and the SDK do).
struct SignalPipe {
  Fd read;
  Fd write;
};
[[nodiscard]] Result<SignalPipe> make_signal_pipe();

/// Signals an eventfd (adds 1) or the write end of a signal pipe (writes 8 bytes). Never an error:
/// EAGAIN (a saturated counter, a full pipe) means a wakeup is already pending, and EPIPE means
/// nobody is left to wake.
void eventfd_signal(int fd) noexcept;
/// Takes what is pending on an eventfd (its counter, cleared) or on the read end of a signal pipe
/// (every signal in it, up to kMaxSignalDrainReads reads: one full pipe costs the reader one
/// wakeup, and a peer that refills it faster than that cannot keep the reader here). Returns 0 when nothing is pending (a non-blocking fd); an error once a pipe's writer
/// has closed its end, since the fd then reads as ready forever.
[[nodiscard]] Result<std::uint64_t> eventfd_drain(int fd);

/// Reads of 16 KiB that signals_read makes at most to empty a pipe: 1 MiB, the largest a pipe
/// can be made without privileges (/proc/sys/fs/pipe-max-size).
inline constexpr std::size_t kMaxSignalDrainReads = 64;

/// What a read of `bytes` (> 0) bytes, starting with `first`, from an eventfd or a signal pipe
/// stands for, as a count of signals (never 0). If the read filled its buffer, a pipe may hold
/// more: with `drain_rest` (only for a non-blocking fd) the rest is read now (at most
/// kMaxSignalDrainReads reads) and counted. For event loops that make the first read themselves.
[[nodiscard]] std::uint64_t signals_read(int fd, std::uint64_t first, std::size_t bytes, bool drain_rest) noexcept;

/// FUTEX_WAIT on a word that may live in shared memory (no FUTEX_PRIVATE_FLAG). Returns when woken,
/// when `*word != expected`, on a signal or after `timeout`. Never an error for those cases.
void futex_wait(const std::uint32_t* word, std::uint32_t expected,
                std::optional<std::chrono::nanoseconds> timeout) noexcept;
/// FUTEX_WAKE up to `count` waiters on `word` (shared, not private). Returns how many woke.
int futex_wake(const std::uint32_t* word, int count) noexcept;

}  // namespace floe::ipc
