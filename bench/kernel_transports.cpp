// The kernel's IPC as baselines: pipes, Unix sockets, eventfds, and a raw shared-memory spin.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "floe/ipc/fd.hpp"
#include "floe/ipc/platform.hpp"
#include "floe/ipc/seqlock.hpp"
#include "transports.hpp"

namespace floe::bench {

namespace {

using ipc::Fd;

std::string errno_text(int code) { return code == 0 ? std::string("peer closed the connection") : std::strerror(code); }

/// write(2) until `n` bytes are out. Returns 0 or the errno.
int write_all(int fd, const void* data, std::size_t n) noexcept {
  const auto* p = static_cast<const std::byte*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

/// read(2) until `n` bytes are in. Returns 0, the errno, or -1 on end of file.
int read_all(int fd, void* data, std::size_t n) noexcept {
  auto* p = static_cast<std::byte*>(data);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return -1;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return 0;
}

/// Pipes and sockets: one write(2) per message is the signal to the peer.
class FdEndpoint {
 public:
  FdEndpoint(int out, int in) noexcept : out_(out), in_(in) {}

  bool send(const Message& m) noexcept {
    ++notifications_;
    return ok(write_all(out_, &m, sizeof m));
  }
  bool receive(Message& m) noexcept { return ok(read_all(in_, &m, sizeof m)); }
  [[nodiscard]] std::uint64_t notifications() const noexcept { return notifications_; }
  [[nodiscard]] std::string error() const { return error_ < 0 ? "end of file" : errno_text(error_); }

 private:
  bool ok(int rc) noexcept {
    error_ = rc;
    return rc == 0;
  }
  int out_;
  int in_;
  int error_ = 0;
  std::uint64_t notifications_ = 0;
};

struct FdPairs {
  Fd ping_out, ping_in;  // pinger writes ping_out, echoer reads ping_in
  Fd pong_out, pong_in;  // echoer writes pong_out, pinger reads pong_in
};

BenchResult fd_rtt(const RunPlan& plan, FdPairs& fds) {
  return run_round_trips<FdEndpoint>(
      plan, [&](RoleContext&) { return std::make_unique<FdEndpoint>(fds.ping_out.get(), fds.pong_in.get()); },
      [&](RoleContext&) { return std::make_unique<FdEndpoint>(fds.pong_out.get(), fds.ping_in.get()); });
}

BenchResult setup_failure(const RunPlan& plan, const char* what) {
  BenchResult r;
  r.name = plan.name;
  r.status = ResultStatus::kFailed;
  r.reason = std::string(what) + ": " + std::strerror(errno);
  return r;
}

// --- eventfd_raw -------------------------------------------------------------------------------

/// 64 payload bytes on their own cache line in a shared mapping.
struct alignas(kCacheLine) Slot {
  std::uint64_t words[8];
};

/// Payload in shared memory, one blocking eventfd per direction as the doorbell.
class EventfdEndpoint {
 public:
  EventfdEndpoint(int wait_fd, int signal_fd, Slot* out, const Slot* in) noexcept
      : wait_fd_(wait_fd), signal_fd_(signal_fd), out_(out), in_(in) {}

  bool send(const Message& m) noexcept {
    ipc::seqlock_copy_in(out_->words, m.words.data(), sizeof m);
    // SYNC(eventfd-raw): the payload stores come before the doorbell write; pairs with the
    // acquire fence after the peer's read(2). (The syscalls order them anyway; this says so.)
    std::atomic_thread_fence(std::memory_order_release);
    const std::uint64_t one = 1;
    ++notifications_;
    return ok(write_all(signal_fd_, &one, sizeof one));
  }
  bool receive(Message& m) noexcept {
    std::uint64_t value = 0;
    if (!ok(read_all(wait_fd_, &value, sizeof value))) return false;
    // SYNC(eventfd-raw): pairs with the release fence before the peer's write(2).
    std::atomic_thread_fence(std::memory_order_acquire);
    ipc::seqlock_copy_out(m.words.data(), in_->words, sizeof m);
    return true;
  }
  [[nodiscard]] std::uint64_t notifications() const noexcept { return notifications_; }
  [[nodiscard]] std::string error() const { return errno_text(error_); }

 private:
  bool ok(int rc) noexcept {
    error_ = rc;
    return rc == 0;
  }
  int wait_fd_;
  int signal_fd_;
  Slot* out_;
  const Slot* in_;
  int error_ = 0;
  std::uint64_t notifications_ = 0;
};

// --- spin_raw ----------------------------------------------------------------------------------

/// One direction: the sequence flag on its own line, the payload on the next.
struct SpinDirection {
  alignas(kCacheLine) std::atomic<std::uint64_t> sequence;
  alignas(kCacheLine) std::uint64_t words[8];
};
static_assert(sizeof(SpinDirection) == 2 * kCacheLine);

/// Two shared atomics (one per direction), both sides spinning; no ring, no syscall.
class SpinEndpoint {
 public:
  SpinEndpoint(SpinDirection* out, const SpinDirection* in) noexcept : out_(out), in_(in) {}

  bool send(const Message& m) noexcept {
    ipc::seqlock_copy_in(out_->words, m.words.data(), sizeof m);
    // SYNC(spin-raw): publishes the payload; pairs with the acquire load in receive().
    out_->sequence.store(++sent_, std::memory_order_release);
    return true;
  }
  bool receive(Message& m) noexcept {
    // SYNC(spin-raw): pairs with the peer's release store of its sequence.
    while (in_->sequence.load(std::memory_order_acquire) == received_) cpu_relax();
    ++received_;
    ipc::seqlock_copy_out(m.words.data(), in_->words, sizeof m);
    return true;
  }
  [[nodiscard]] std::uint64_t notifications() const noexcept { return 0; }
  [[nodiscard]] std::string error() const { return {}; }

 private:
  SpinDirection* out_;
  const SpinDirection* in_;
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
};

// --- streams -----------------------------------------------------------------------------------

class FdStreamProducer {
 public:
  explicit FdStreamProducer(int fd) noexcept : fd_(fd) {}
  bool send(std::uint64_t first, std::uint64_t count) noexcept {
    Message m = make_message(0);
    for (std::uint64_t seq = first; seq < first + count; ++seq) {
      m.words[0] = seq;
      ++notifications_;
      if (const int rc = write_all(fd_, &m, sizeof m); rc != 0) {
        error_ = rc;
        return false;
      }
    }
    return true;
  }
  [[nodiscard]] std::uint64_t notifications() const noexcept { return notifications_; }
  [[nodiscard]] std::string error() const { return errno_text(error_); }

 private:
  int fd_;
  int error_ = 0;
  std::uint64_t notifications_ = 0;
};

/// Reads as much as one read(2) returns (up to 64 KiB: for a pipe, many messages; for a
/// SEQPACKET socket, exactly one packet) and checks every whole message in it.
class FdStreamConsumer {
 public:
  explicit FdStreamConsumer(int fd, bool packets) noexcept : fd_(fd), packets_(packets) {}
  bool receive(std::uint64_t& next, std::uint64_t end, std::uint64_t& sum) noexcept {
    const std::size_t room = packets_ ? sizeof(Message) : buffer_.size() * sizeof(Message) - partial_;
    auto* bytes = reinterpret_cast<std::byte*>(buffer_.data());
    ssize_t r;
    do {
      r = ::read(fd_, bytes + partial_, room);
    } while (r < 0 && errno == EINTR);
    ++reads_;
    if (r <= 0) {
      error_ = r == 0 ? "end of file" : std::strerror(errno);
      return false;
    }
    const std::size_t have = partial_ + static_cast<std::size_t>(r);
    const std::size_t whole = have / sizeof(Message);
    for (std::size_t i = 0; i < whole; ++i) {
      if (buffer_[i].words[0] != next || next >= end) {
        error_ = "message " + std::to_string(buffer_[i].words[0]) + " out of order";
        return false;
      }
      ++next;
      sum = fold(sum, buffer_[i]);
    }
    partial_ = have - whole * sizeof(Message);
    if (partial_ > 0) std::memmove(bytes, bytes + whole * sizeof(Message), partial_);
    return true;
  }
  [[nodiscard]] std::uint64_t aux() const noexcept { return reads_; }
  [[nodiscard]] std::string error() const { return error_; }

 private:
  int fd_;
  bool packets_;
  std::vector<Message> buffer_ = std::vector<Message>(1024);
  std::size_t partial_ = 0;
  std::uint64_t reads_ = 0;
  std::string error_;
};


}  // namespace

BenchResult bench_pipe_rtt(const RunPlan& plan) {
  int a[2], b[2];
  if (::pipe2(a, O_CLOEXEC) != 0) return setup_failure(plan, "pipe2");
  FdPairs fds{Fd(a[1]), Fd(a[0]), {}, {}};
  if (::pipe2(b, O_CLOEXEC) != 0) return setup_failure(plan, "pipe2");
  fds.pong_out = Fd(b[1]);
  fds.pong_in = Fd(b[0]);
  return fd_rtt(plan, fds);
}

namespace {
BenchResult socket_rtt(const RunPlan& plan, int type) {
  int sv[2];
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) return setup_failure(plan, "socketpair");
  Fd a(sv[0]);
  Fd b(sv[1]);
  // One socket per side carries both directions.
  FdPairs fds{Fd(::dup(a.get())), Fd(::dup(b.get())), std::move(b), std::move(a)};
  return fd_rtt(plan, fds);
}
}  // namespace

BenchResult bench_unix_stream_rtt(const RunPlan& plan) { return socket_rtt(plan, SOCK_STREAM); }
BenchResult bench_unix_seqpacket_rtt(const RunPlan& plan) { return socket_rtt(plan, SOCK_SEQPACKET); }

BenchResult bench_eventfd_raw_rtt(const RunPlan& plan) {
  Fd ping(::eventfd(0, EFD_CLOEXEC));
  Fd pong(::eventfd(0, EFD_CLOEXEC));
  if (!ping || !pong) return setup_failure(plan, "eventfd");
  auto slots = SharedMapping::create(2 * sizeof(Slot));
  if (!slots) return setup_failure(plan, "mmap");
  auto* s = reinterpret_cast<Slot*>(slots->data());
  return run_round_trips<EventfdEndpoint>(
      plan, [&](RoleContext&) { return std::make_unique<EventfdEndpoint>(pong.get(), ping.get(), &s[0], &s[1]); },
      [&](RoleContext&) { return std::make_unique<EventfdEndpoint>(ping.get(), pong.get(), &s[1], &s[0]); });
}

BenchResult bench_spin_raw_rtt(const RunPlan& plan) {
  auto lines = SharedMapping::create(2 * sizeof(SpinDirection));
  if (!lines) return setup_failure(plan, "mmap");
  auto* d = new (lines->data()) SpinDirection[2]{};
  return run_round_trips<SpinEndpoint>(
      plan, [&](RoleContext&) { return std::make_unique<SpinEndpoint>(&d[0], &d[1]); },
      [&](RoleContext&) { return std::make_unique<SpinEndpoint>(&d[1], &d[0]); });
}

namespace {
BenchResult fd_stream(const RunPlan& plan, int write_fd, int read_fd, bool packets) {
  return run_stream<FdStreamProducer, FdStreamConsumer>(
      plan, [&](RoleContext&) { return std::make_unique<FdStreamProducer>(write_fd); },
      [&](RoleContext&) { return std::make_unique<FdStreamConsumer>(read_fd, packets); },
      "consumer read(2)s per message");
}
}  // namespace

BenchResult bench_unix_seqpacket_stream(const RunPlan& plan) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return setup_failure(plan, "socketpair");
  Fd a(sv[0]);
  Fd b(sv[1]);
  return fd_stream(plan, a.get(), b.get(), true);
}

BenchResult bench_pipe_stream(const RunPlan& plan) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return setup_failure(plan, "pipe2");
  Fd r(p[0]);
  Fd w(p[1]);
  return fd_stream(plan, w.get(), r.get(), false);
}

}  // namespace floe::bench
