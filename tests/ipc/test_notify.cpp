#include "floe/ipc/notify.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <new>
#include <thread>

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

TEST(NotifyMode, NamesRoundTripThroughParse) {
  for (const NotifyMode m : {NotifyMode::kEventfd, NotifyMode::kFutex, NotifyMode::kSpin, NotifyMode::kPoll}) {
    const auto parsed = parse_notify_mode(to_string(m));
    ASSERT_TRUE(parsed.has_value()) << to_string(m);
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(to_string(NotifyMode::kEventfd), "eventfd");
  EXPECT_EQ(to_string(NotifyMode::kFutex), "futex");
  EXPECT_EQ(to_string(NotifyMode::kSpin), "spin");
  EXPECT_EQ(to_string(NotifyMode::kPoll), "poll");
}

TEST(NotifyMode, ParseRejectsUnknownNames) {
  EXPECT_FALSE(parse_notify_mode("").has_value());
  EXPECT_FALSE(parse_notify_mode("Eventfd").has_value());
  EXPECT_FALSE(parse_notify_mode("spinning").has_value());
  EXPECT_FALSE(parse_notify_mode("unknown").has_value());
}

TEST(Eventfd, IsCloseOnExecAndBlockingByDefault) {
  auto fd = make_eventfd();
  ASSERT_TRUE(fd.has_value()) << fd.error().to_string();
  EXPECT_NE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK, 0);
}

TEST(Eventfd, NonBlockingOnRequest) {
  auto fd = make_eventfd(true);
  ASSERT_TRUE(fd.has_value());
  EXPECT_NE(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(Eventfd, DrainReturnsTheNumberOfSignalsAndClearsTheCounter) {
  auto fd = make_eventfd(true);
  ASSERT_TRUE(fd.has_value());
  for (int i = 0; i < 3; ++i) eventfd_signal(fd->get());
  auto n = eventfd_drain(fd->get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 3u);
  n = eventfd_drain(fd->get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u) << "non-blocking drain of an empty counter is 0, not an error";
}

TEST(Eventfd, SignalOnASaturatedCounterDoesNotBlock) {
  auto fd = make_eventfd(true);
  ASSERT_TRUE(fd.has_value());
  const std::uint64_t almost_full = 0xFFFFFFFFFFFFFFFEULL;  // the counter's maximum
  ASSERT_EQ(::write(fd->get(), &almost_full, sizeof almost_full), 8);
  eventfd_signal(fd->get());  // EAGAIN inside: must return, not spin or block
  auto n = eventfd_drain(fd->get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, almost_full);
}

TEST(Eventfd, DrainOnABadFdIsAnError) {
  const auto n = eventfd_drain(-1);
  ASSERT_FALSE(n.has_value());
  EXPECT_EQ(n.error().code, EBADF);
}

TEST(Eventfd, BlockingDrainWakesForASignalFromAnotherThread) {
  auto fd = make_eventfd();
  ASSERT_TRUE(fd.has_value());
  std::thread signaller([&] {
    std::this_thread::sleep_for(20ms);
    eventfd_signal(fd->get());
  });
  const auto n = eventfd_drain(fd->get());
  signaller.join();
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
}

TEST(SignalPipe, EndsAreNonBlockingCloseOnExecAndSeparateDescriptions) {
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value()) << p.error().to_string();
  for (const int fd : {p->read.get(), p->write.get()}) {
    EXPECT_NE(::fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  }
  // What the peer does to its end (here: the reader's) does not reach the other end.
  ASSERT_EQ(::fcntl(p->read.get(), F_SETFL, 0), 0);
  EXPECT_NE(::fcntl(p->write.get(), F_GETFL) & O_NONBLOCK, 0);
}

TEST(SignalPipe, DrainCountsTheSignalsAndIsZeroWhenEmpty) {
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value());
  auto n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u);
  eventfd_signal(p->write.get());
  n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  for (int i = 0; i < 3; ++i) eventfd_signal(p->write.get());
  n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 3u);
  // A partial signal (a hostile writer's) still counts as one.
  ASSERT_EQ(::write(p->write.get(), "abc", 3), 3);
  n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
}

TEST(SignalPipe, AFullPipeNeverBlocksTheSignaller) {
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value());
  // The reader shrinks the pipe and makes its end blocking: the writer's end is unaffected.
  ASSERT_GT(::fcntl(p->read.get(), F_SETPIPE_SZ, 4096), 0);
  ASSERT_EQ(::fcntl(p->read.get(), F_SETFL, 0), 0);
  const int capacity = ::fcntl(p->write.get(), F_GETPIPE_SZ);
  for (int i = 0; i < capacity / 8 + 100; ++i) eventfd_signal(p->write.get());  // EAGAIN inside
  // A non-blocking reader (a loop's) empties it in one drain.
  ASSERT_EQ(::fcntl(p->read.get(), F_SETFL, O_NONBLOCK), 0);
  auto n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, static_cast<std::uint64_t>(capacity / 8)) << "one drain empties the pipe";
  n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u);
}

// A peer refilling its pipe from other threads as fast as it is read must not keep the reader's
// loop in one callback: /dev/zero stands for a pipe that is never empty (every read is full).
TEST(SignalPipe, ADrainReadsAtMostOnePipeFullPerCall) {
  const int fd = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const std::uint64_t n = signals_read(fd, 0, 64, /*drain_rest=*/true);
  ::close(fd);
  EXPECT_EQ(n, 64 / 8 + kMaxSignalDrainReads * 16384 / 8);
}

TEST(SignalPipe, EightZeroBytesAreStillASignal) {
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value());
  const std::uint64_t zero = 0;
  ASSERT_EQ(::write(p->write.get(), &zero, sizeof zero), 8);
  auto n = eventfd_drain(p->read.get());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
}

TEST(SignalPipe, AGoneWriterIsAnErrorAndAGoneReaderIsHarmless) {
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value());
  eventfd_signal(p->write.get());
  p->write.reset();
  auto n = eventfd_drain(p->read.get());  // what was written before the close is still read
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  n = eventfd_drain(p->read.get());
  ASSERT_FALSE(n.has_value());
  EXPECT_EQ(n.error().code, EPIPE);

  auto q = make_signal_pipe();
  ASSERT_TRUE(q.has_value());
  q->read.reset();
  struct sigaction saved {};
  ::sigaction(SIGPIPE, nullptr, &saved);
  ::signal(SIGPIPE, SIG_IGN);  // as floe-core and the SDK do
  eventfd_signal(q->write.get());  // EPIPE inside: returns
  ::sigaction(SIGPIPE, &saved, nullptr);
}

TEST(Futex, WaitReturnsAtOnceWhenTheWordDiffers) {
  alignas(4) std::uint32_t word = 5;
  const auto start = std::chrono::steady_clock::now();
  futex_wait(&word, 4, 10s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST(Futex, WaitHonoursItsTimeout) {
  alignas(4) std::uint32_t word = 0;
  const auto start = std::chrono::steady_clock::now();
  futex_wait(&word, 0, 20ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 20ms);
}

TEST(Futex, WakeWithNoWaitersWakesNobody) {
  alignas(4) std::uint32_t word = 0;
  EXPECT_EQ(futex_wake(&word, 1), 0);
}

/// Wakes `word` until a FUTEX_WAKE finds a sleeper (proving the waiter really slept on it), or
/// 20 s pass. Returns whether one was found.
bool wake_a_sleeper(const std::uint32_t* word) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(2ms);
    if (futex_wake(word, 1) == 1) return true;
  }
  return false;
}

TEST(Futex, WakeReleasesAWaiterInAnotherThread) {
  std::atomic<std::uint32_t> word{0};
  std::atomic<bool> done{false};
  const auto* raw = reinterpret_cast<const std::uint32_t*>(&word);
  std::thread waiter([&] {
    // Like a real waiter: any return re-checks the word.
    while (word.load(std::memory_order_acquire) == 0) futex_wait(raw, 0, std::nullopt);
    done.store(true, std::memory_order_release);
  });
  // The word is still 0, so a woken waiter goes back to sleep: the wake only proves it slept there.
  EXPECT_TRUE(wake_a_sleeper(raw)) << "no FUTEX_WAKE found the waiter asleep";
  word.store(1, std::memory_order_release);
  while (!done.load(std::memory_order_acquire)) {
    (void)futex_wake(raw, 1);
    std::this_thread::sleep_for(1ms);
  }
  waiter.join();
}

TEST(Futex, WorksOnSharedMemoryAcrossAFork) {
  // The word lives in a MAP_SHARED mapping and the waiter in another process: a private futex
  // would key on each process's mm and the wake would never find the waiter.
  void* mem = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* word = new (mem) std::atomic<std::uint32_t>(0);
  const auto* raw = reinterpret_cast<const std::uint32_t*>(word);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (word->load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < deadline) {
      futex_wait(raw, 0, 1s);
    }
    _exit(word->load(std::memory_order_acquire) == 1 ? 0 : 1);
  }
  const bool found = wake_a_sleeper(raw);
  word->store(1, std::memory_order_release);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    (void)futex_wake(raw, 1);
    std::this_thread::sleep_for(1ms);
  }
  ::munmap(mem, 4096);
  EXPECT_TRUE(found) << "FUTEX_WAKE in the parent never found the child asleep on the shared word";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace floe::ipc
