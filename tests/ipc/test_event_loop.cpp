// Conformance suite for floe::ipc::EventLoop: every test runs against each backend (io_uring is
// skipped where the kernel refuses it). Real eventfds, pipes, sockets and timers; no timing
// assertions — time bounds here are only hang guards, and "did not fire" is proven by ordering
// (a later sentinel timer fires first).
#include "floe/ipc/event_loop.hpp"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <iterator>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "floe/ipc/fd.hpp"
#include "floe/ipc/notify.hpp"
#include "support/environment.hpp"

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

constexpr auto kHangGuard = std::chrono::seconds(20);

Fd make_test_eventfd(bool nonblocking) {
  Fd fd(::eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0)));
  EXPECT_TRUE(fd.valid()) << "eventfd: " << std::strerror(errno);
  return fd;
}

void add_to_eventfd(int fd, std::uint64_t n) {
  ASSERT_EQ(::write(fd, &n, sizeof n), static_cast<ssize_t>(sizeof n));
}

std::pair<Fd, Fd> make_pipe() {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
  return {Fd(fds[0]), Fd(fds[1])};
}

std::pair<Fd, Fd> make_socketpair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds), 0);
  return {Fd(fds[0]), Fd(fds[1])};
}

void write_bytes(int fd, std::size_t n) {
  const std::string data(n, 'x');
  ASSERT_EQ(::write(fd, data.data(), n), static_cast<ssize_t>(n));
}

// Reads one byte; true if one was there.
bool read_one_byte(int fd) {
  char c = 0;
  return ::read(fd, &c, 1) == 1;
}

class EventLoopConformance : public ::testing::TestWithParam<LoopBackend> {
 protected:
  void SetUp() override {
    loop_ = make_loop({.backend = GetParam()});
    if (!loop_ && GetParam() == LoopBackend::kIoUring) GTEST_SKIP() << "io_uring unavailable";
  }

  // A loop of this suite's backend; nullptr if the kernel refuses io_uring (SetUp skips then).
  static std::unique_ptr<EventLoop> make_loop(LoopOptions options) {
    auto loop = EventLoop::create(options);
    if (!loop) {
      if (options.backend != LoopBackend::kIoUring) ADD_FAILURE() << loop.error().to_string();
      return nullptr;
    }
    EXPECT_EQ((*loop)->backend(), options.backend);
    return std::move(*loop);
  }

  // Runs the loop until `done()`; false (and a failure) if the hang guard expires first.
  static bool run_until(EventLoop& loop, const std::function<bool()>& done) {
    const auto give_up = std::chrono::steady_clock::now() + kHangGuard;
    while (!done()) {
      if (std::chrono::steady_clock::now() > give_up) {
        ADD_FAILURE() << "hang guard expired";
        return false;
      }
      const auto ran = loop.run_once(100ms);
      if (!ran) {
        ADD_FAILURE() << ran.error().to_string();
        return false;
      }
    }
    return true;
  }
  bool run_until(const std::function<bool()>& done) { return run_until(*loop_, done); }

  // Runs the loop until a timer added now fires: everything that was ready before it has been
  // dispatched by then (and anything due earlier has had its chance).
  void run_past_sentinel(std::chrono::nanoseconds delay = 20ms) {
    bool fired = false;
    ASSERT_TRUE(loop_->add_timer(delay, false, [&] { fired = true; }).has_value());
    run_until([&] { return fired; });
  }

  std::unique_ptr<EventLoop> loop_;
};

TEST_P(EventLoopConformance, ReportsItsBackend) {
  if (!loop_) return;
  EXPECT_EQ(loop_->backend(), GetParam());
}

TEST_P(EventLoopConformance, EventfdWatchDeliversTheCounter) {
  if (!loop_) return;
  for (const bool nonblocking : {false, true}) {
    SCOPED_TRACE(nonblocking ? "non-blocking eventfd" : "blocking eventfd");
    if (!nonblocking && GetParam() == LoopBackend::kEpoll) continue;  // epoll needs EFD_NONBLOCK
    Fd efd = make_test_eventfd(nonblocking);
    std::uint64_t sum = 0;
    std::size_t calls = 0;
    auto id = loop_->watch_eventfd(efd.get(), [&](std::uint64_t v) {
      EXPECT_GT(v, 0u);
      sum += v;
      ++calls;
    });
    ASSERT_TRUE(id.has_value()) << id.error().to_string();
    add_to_eventfd(efd.get(), 5);
    add_to_eventfd(efd.get(), 3);
    ASSERT_TRUE(run_until([&] { return sum == 8; }));
    // Re-armed after each completion: later writes are delivered too.
    for (std::uint64_t round = 1; round <= 3; ++round) {
      add_to_eventfd(efd.get(), round);
      const std::uint64_t want = sum + round;
      ASSERT_TRUE(run_until([&] { return sum == want; }));
    }
    run_past_sentinel(1ms);
    EXPECT_EQ(sum, 14u);
    EXPECT_GE(calls, 4u);
    loop_->cancel(*id);
  }
}

TEST_P(EventLoopConformance, ReadablePipeWatchFiresRepeatedlyUntilDrained) {
  if (!loop_) return;
  auto [rd, wr] = make_pipe();
  int calls = 0;
  // Reads one byte per call: the watch is level-triggered, so it fires once per byte.
  auto id = loop_->watch_readable(rd.get(), [&, fd = rd.get()] {
    EXPECT_TRUE(read_one_byte(fd));
    ++calls;
  });
  ASSERT_TRUE(id.has_value()) << id.error().to_string();
  write_bytes(wr.get(), 3);
  ASSERT_TRUE(run_until([&] { return calls == 3; }));
  run_past_sentinel(1ms);
  EXPECT_EQ(calls, 3);
  // And again for data written later.
  write_bytes(wr.get(), 2);
  ASSERT_TRUE(run_until([&] { return calls == 5; }));
  run_past_sentinel(1ms);
  EXPECT_EQ(calls, 5);
}

TEST_P(EventLoopConformance, SignalPipeWatchCountsSignalsAndEndsQuietlyWhenTheWriterGoes) {
  if (!loop_) return;
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value()) << p.error().to_string();
  std::uint64_t sum = 0;
  auto id = loop_->watch_eventfd(p->read.get(), [&](std::uint64_t v) {
    EXPECT_GT(v, 0u);
    sum += 1;
  });
  ASSERT_TRUE(id.has_value()) << id.error().to_string();
  eventfd_signal(p->write.get());
  ASSERT_TRUE(run_until([&] { return sum == 1; }));
  // A partial signal (a hostile writer's) is a signal, not a reason to drop the watch.
  ASSERT_EQ(::write(p->write.get(), "ab", 2), 2);
  ASSERT_TRUE(run_until([&] { return sum == 2; }));
  eventfd_signal(p->write.get());
  ASSERT_TRUE(run_until([&] { return sum == 3; }));
  // The writer goes: the pipe reads as ready forever. The watch ends instead of spinning: the
  // loop goes back to sleep (a run_once with a timeout runs no callback).
  p->write.reset();
  run_past_sentinel(5ms);
  const auto ran = loop_->run_once(20ms);
  ASSERT_TRUE(ran.has_value());
  EXPECT_EQ(*ran, 0u);
  EXPECT_EQ(sum, 3u);
  loop_->cancel(*id);  // harmless after the watch ended
}

TEST_P(EventLoopConformance, AFullSignalPipeCostsOneCallback) {
  if (!loop_) return;
  auto p = make_signal_pipe();
  ASSERT_TRUE(p.has_value()) << p.error().to_string();
  // A peer enlarges the pipe and fills it with one write: one wakeup's worth of work for the loop,
  // not one per signal (32,768 of them here).
  ASSERT_GT(::fcntl(p->write.get(), F_SETPIPE_SZ, 256 * 1024), 0);
  const std::vector<std::byte> flood(static_cast<std::size_t>(::fcntl(p->write.get(), F_GETPIPE_SZ)), std::byte{1});
  ASSERT_EQ(::write(p->write.get(), flood.data(), flood.size()), static_cast<ssize_t>(flood.size()));
  int calls = 0;
  std::uint64_t total = 0;
  auto id = loop_->watch_eventfd(p->read.get(), [&](std::uint64_t v) {
    ++calls;
    total += v;
  });
  ASSERT_TRUE(id.has_value()) << id.error().to_string();
  run_past_sentinel(5ms);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(total, flood.size() / 8);
  // And the pipe is empty: nothing more comes.
  const auto ran = loop_->run_once(20ms);
  ASSERT_TRUE(ran.has_value());
  EXPECT_EQ(*ran, 0u);
  loop_->cancel(*id);
}

TEST_P(EventLoopConformance, ReadableSocketWatchFiresForEachMessage) {
  if (!loop_) return;
  auto [a, b] = make_socketpair();
  std::string received;
  auto id = loop_->watch_readable(b.get(), [&, fd = b.get()] {
    char buf[64];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    ASSERT_GT(n, 0);
    received.append(buf, static_cast<std::size_t>(n));
  });
  ASSERT_TRUE(id.has_value()) << id.error().to_string();
  for (const std::string msg : {"hello", " ", "world"}) {
    ASSERT_EQ(::write(a.get(), msg.data(), msg.size()), static_cast<ssize_t>(msg.size()));
    const std::size_t want = received.size() + msg.size();
    ASSERT_TRUE(run_until([&] { return received.size() == want; }));
  }
  EXPECT_EQ(received, "hello world");
}

TEST_P(EventLoopConformance, ManyWatchesAtOnceAllFire) {
  if (!loop_) return;
  // A tiny queue: more watches than SQ entries and more completions than CQ entries at once.
  auto small = make_loop({.backend = GetParam(), .queue_depth = 4});
  if (!small) return;
  constexpr int kWatches = 200;
  std::vector<Fd> efds;
  std::vector<std::pair<Fd, Fd>> pipes;
  std::vector<int> hits(2 * kWatches, 0);
  for (int i = 0; i < kWatches; ++i) {
    efds.push_back(make_test_eventfd(i % 2 == 0));
    if (GetParam() == LoopBackend::kEpoll) efds.back() = make_test_eventfd(true);
    add_to_eventfd(efds.back().get(), 1);
    ASSERT_TRUE(small->watch_eventfd(efds.back().get(), [&hits, i](std::uint64_t v) { hits[i] += static_cast<int>(v); }));
    pipes.push_back(make_pipe());
    write_bytes(pipes.back().second.get(), 1);
    ASSERT_TRUE(small->watch_readable(pipes.back().first.get(), [&hits, i, fd = pipes.back().first.get()] {
      if (read_one_byte(fd)) ++hits[kWatches + i];
    }));
  }
  auto all_hit = [&] {
    for (const int h : hits) {
      if (h != 1) return false;
    }
    return true;
  };
  ASSERT_TRUE(run_until(*small, all_hit));
  // Every watch still works after the storm.
  for (const auto& e : efds) add_to_eventfd(e.get(), 1);
  ASSERT_TRUE(run_until(*small, [&] {
    for (int i = 0; i < kWatches; ++i) {
      if (hits[i] != 2) return false;
    }
    return true;
  }));
}

TEST_P(EventLoopConformance, CancelBeforeFireMeansNeverCalled) {
  if (!loop_) return;
  Fd efd = make_test_eventfd(true);
  auto [rd, wr] = make_pipe();
  bool called = false;
  auto e = loop_->watch_eventfd(efd.get(), [&](std::uint64_t) { called = true; });
  auto r = loop_->watch_readable(rd.get(), [&] { called = true; });
  auto t = loop_->add_timer(1ms, false, [&] { called = true; });
  auto rt = loop_->add_timer(1ms, true, [&] { called = true; });
  ASSERT_TRUE(e && r && t && rt);
  loop_->cancel(*e);
  loop_->cancel(*r);
  loop_->cancel(*t);
  loop_->cancel(*rt);
  add_to_eventfd(efd.get(), 1);
  write_bytes(wr.get(), 1);
  run_past_sentinel();
  EXPECT_FALSE(called);
}

TEST_P(EventLoopConformance, CancelAfterSomeRunsStopsTheWatch) {
  if (!loop_) return;
  Fd efd = make_test_eventfd(true);
  int calls = 0;
  auto id = loop_->watch_eventfd(efd.get(), [&](std::uint64_t) { ++calls; });
  ASSERT_TRUE(id);
  add_to_eventfd(efd.get(), 1);
  ASSERT_TRUE(run_until([&] { return calls == 1; }));
  loop_->cancel(*id);
  add_to_eventfd(efd.get(), 1);
  run_past_sentinel();
  EXPECT_EQ(calls, 1);
}

TEST_P(EventLoopConformance, CancelledWatchNeverTouchesALaterFileWithTheSameFdNumber) {
  if (!loop_) return;
  for (const bool nonblocking : {false, true}) {
    SCOPED_TRACE(nonblocking ? "non-blocking eventfd" : "blocking eventfd");
    if (!nonblocking && GetParam() == LoopBackend::kEpoll) continue;  // epoll needs EFD_NONBLOCK
    Fd old_fd = make_test_eventfd(nonblocking);
    const int number = old_fd.get();
    int old_calls = 0;
    auto old_id = loop_->watch_eventfd(number, [&](std::uint64_t) { ++old_calls; });
    ASSERT_TRUE(old_id);
    add_to_eventfd(number, 1);
    // After this the watch has re-armed: its next read is queued in the loop.
    ASSERT_TRUE(run_until([&] { return old_calls == 1; }));
    loop_->cancel(*old_id);
    old_fd.reset();
    Fd new_fd = make_test_eventfd(nonblocking);
    EXPECT_EQ(new_fd.get(), number) << "the kernel did not reuse the number; the test is weaker";
    std::uint64_t sum = 0;
    auto new_id = loop_->watch_eventfd(new_fd.get(), [&](std::uint64_t v) { sum += v; });
    ASSERT_TRUE(new_id);
    add_to_eventfd(new_fd.get(), 5);
    ASSERT_TRUE(run_until([&] { return sum == 5; }));
    add_to_eventfd(new_fd.get(), 2);
    ASSERT_TRUE(run_until([&] { return sum == 7; }));
    EXPECT_EQ(old_calls, 1);
    loop_->cancel(*new_id);  // before new_fd closes, as every owner of a watched fd must
  }
}

// The watch's wait fires after the owner has cancelled it and closed its fd (the file itself lives
// on: another descriptor of it is written, here a dup, elsewhere a peer's copy). A read that the
// kernel chains to that wait would look the number up only then and find the new file in it,
// whose signal it would swallow for a dead watch: the new watch would never hear of it.
TEST_P(EventLoopConformance, AWaitFiringAfterCancelAndCloseLeavesTheNewFileWithThatNumberAlone) {
  if (!loop_) return;
  Fd old_fd = make_test_eventfd(/*nonblocking=*/true);
  const Fd other_copy(::dup(old_fd.get()));
  ASSERT_TRUE(other_copy);
  const int number = old_fd.get();
  int old_calls = 0;
  auto old_id = loop_->watch_eventfd(number, [&](std::uint64_t) { ++old_calls; });
  ASSERT_TRUE(old_id);
  // A zero-timeout turn submits the watch's wait to the kernel without anything to dispatch.
  ASSERT_TRUE(loop_->run_once(0ms));
  loop_->cancel(*old_id);
  old_fd.reset();
  Fd new_fd = make_test_eventfd(/*nonblocking=*/true);
  ASSERT_EQ(new_fd.get(), number) << "the kernel did not reuse the number";
  add_to_eventfd(new_fd.get(), 5);
  // The old file becomes readable: the dead watch's wait completes.
  add_to_eventfd(other_copy.get(), 1);
  std::uint64_t sum = 0;
  auto new_id = loop_->watch_eventfd(new_fd.get(), [&](std::uint64_t v) { sum += v; });
  ASSERT_TRUE(new_id);
  ASSERT_TRUE(run_until([&] { return sum == 5; }));
  run_past_sentinel();
  EXPECT_EQ(sum, 5U);
  EXPECT_EQ(old_calls, 0);
  loop_->cancel(*new_id);
}

TEST_P(EventLoopConformance, CancellingUnknownOrFinishedIdsIsHarmless) {
  if (!loop_) return;
  loop_->cancel(0);
  loop_->cancel(987654321);
  bool fired = false;
  auto t = loop_->add_timer(0ns, false, [&] { fired = true; });
  ASSERT_TRUE(t);
  ASSERT_TRUE(run_until([&] { return fired; }));
  loop_->cancel(*t);
  loop_->cancel(*t);
  // The internal wake watch must survive all of the above.
  std::thread waker([&] { loop_->wake(); });
  EXPECT_TRUE(loop_->run_once(std::nullopt).has_value());
  waker.join();
}

TEST_P(EventLoopConformance, CallbackCanCancelItsOwnWatch) {
  if (!loop_) return;
  auto [rd, wr] = make_pipe();
  Fd efd = make_test_eventfd(true);
  int readable_calls = 0;
  int eventfd_calls = 0;
  int timer_calls = 0;
  WatchId readable = 0;
  WatchId eventfd = 0;
  WatchId timer = 0;
  auto r = loop_->watch_readable(rd.get(), [&] {
    ++readable_calls;  // leaves the data unread: only the cancel keeps this from firing again
    loop_->cancel(readable);
  });
  auto e = loop_->watch_eventfd(efd.get(), [&](std::uint64_t) {
    ++eventfd_calls;
    loop_->cancel(eventfd);
  });
  auto t = loop_->add_timer(1ms, true, [&] {
    if (++timer_calls == 3) loop_->cancel(timer);
  });
  ASSERT_TRUE(r && e && t);
  readable = *r;
  eventfd = *e;
  timer = *t;
  write_bytes(wr.get(), 4);
  add_to_eventfd(efd.get(), 1);
  ASSERT_TRUE(run_until([&] { return readable_calls > 0 && eventfd_calls > 0 && timer_calls >= 3; }));
  add_to_eventfd(efd.get(), 1);
  run_past_sentinel();
  EXPECT_EQ(readable_calls, 1);
  EXPECT_EQ(eventfd_calls, 1);
  EXPECT_EQ(timer_calls, 3);
}

TEST_P(EventLoopConformance, CancellingAWatchReadyInTheSameBatchSkipsIt) {
  if (!loop_) return;
  for (const bool use_pipes : {false, true}) {
    SCOPED_TRACE(use_pipes ? "pipes" : "eventfds");
    Fd efd_a = make_test_eventfd(true);
    Fd efd_b = make_test_eventfd(true);
    auto pipe_a = make_pipe();
    auto pipe_b = make_pipe();
    int calls_a = 0;
    int calls_b = 0;
    WatchId a = 0;
    WatchId b = 0;
    // Whichever runs first cancels the other, whose event is already pending in this batch.
    auto on_a = [&] {
      ++calls_a;
      loop_->cancel(b);
      loop_->cancel(a);
    };
    auto on_b = [&] {
      ++calls_b;
      loop_->cancel(a);
      loop_->cancel(b);
    };
    if (use_pipes) {
      auto ra = loop_->watch_readable(pipe_a.first.get(), on_a);
      auto rb = loop_->watch_readable(pipe_b.first.get(), on_b);
      ASSERT_TRUE(ra && rb);
      a = *ra;
      b = *rb;
      // Arm the polls first so both completions come from one wakeup of the loop.
      ASSERT_TRUE(loop_->run_once(0ns).has_value());
      write_bytes(pipe_a.second.get(), 1);
      write_bytes(pipe_b.second.get(), 1);
    } else {
      auto ea = loop_->watch_eventfd(efd_a.get(), [&](std::uint64_t) { on_a(); });
      auto eb = loop_->watch_eventfd(efd_b.get(), [&](std::uint64_t) { on_b(); });
      ASSERT_TRUE(ea && eb);
      a = *ea;
      b = *eb;
      add_to_eventfd(efd_a.get(), 1);
      add_to_eventfd(efd_b.get(), 1);
    }
    ASSERT_TRUE(run_until([&] { return calls_a + calls_b > 0; }));
    run_past_sentinel(1ms);
    EXPECT_EQ(calls_a + calls_b, 1);
  }
}

TEST_P(EventLoopConformance, CallbackCanAddAWatch) {
  if (!loop_) return;
  Fd efd = make_test_eventfd(true);
  std::uint64_t got = 0;
  int timers = 0;
  auto t = loop_->add_timer(1ms, false, [&] {
    auto id = loop_->watch_eventfd(efd.get(), [&](std::uint64_t v) { got += v; });
    EXPECT_TRUE(id.has_value());
    // And a timer from a timer callback.
    EXPECT_TRUE(loop_->add_timer(0ns, false, [&] { ++timers; }).has_value());
    add_to_eventfd(efd.get(), 42);
  });
  ASSERT_TRUE(t);
  ASSERT_TRUE(run_until([&] { return got == 42 && timers == 1; }));
}

TEST_P(EventLoopConformance, OneShotTimerFiresOnce) {
  if (!loop_) return;
  int calls = 0;
  ASSERT_TRUE(loop_->add_timer(1ms, false, [&] { ++calls; }));
  ASSERT_TRUE(run_until([&] { return calls == 1; }));
  run_past_sentinel(30ms);
  EXPECT_EQ(calls, 1);
}

TEST_P(EventLoopConformance, ZeroDelayTimerFires) {
  if (!loop_) return;
  bool fired = false;
  ASSERT_TRUE(loop_->add_timer(0ns, false, [&] { fired = true; }));
  ASSERT_TRUE(run_until([&] { return fired; }));
}

TEST_P(EventLoopConformance, RepeatingTimerFiresUntilCancelled) {
  if (!loop_) return;
  constexpr int kFires = 5;
  int calls = 0;
  WatchId id = 0;
  auto t = loop_->add_timer(2ms, true, [&] {
    if (++calls == kFires) loop_->cancel(id);
  });
  ASSERT_TRUE(t);
  id = *t;
  ASSERT_TRUE(run_until([&] { return calls == kFires; }));
  run_past_sentinel(30ms);
  EXPECT_EQ(calls, kFires);
}

TEST_P(EventLoopConformance, RepeatingTimerCancelledFromOutsideStops) {
  if (!loop_) return;
  int calls = 0;
  auto t = loop_->add_timer(1ms, true, [&] { ++calls; });
  ASSERT_TRUE(t);
  ASSERT_TRUE(run_until([&] { return calls >= 2; }));
  loop_->cancel(*t);
  const int at_cancel = calls;
  run_past_sentinel(30ms);
  EXPECT_EQ(calls, at_cancel);
}

TEST_P(EventLoopConformance, StopFromAnotherThreadEndsRun) {
  if (!loop_) return;
  std::atomic<bool> running{false};
  ASSERT_TRUE(loop_->add_timer(0ns, false, [&] { running.store(true, std::memory_order_release); }));
  std::thread stopper([&] {
    while (!running.load(std::memory_order_acquire)) std::this_thread::yield();
    loop_->stop();
  });
  const auto status = loop_->run();
  stopper.join();
  EXPECT_TRUE(status.has_value());
  // The loop is reusable after a stop.
  bool fired = false;
  ASSERT_TRUE(loop_->add_timer(0ns, false, [&] { fired = true; }));
  ASSERT_TRUE(run_until([&] { return fired; }));
}

TEST_P(EventLoopConformance, StopBeforeRunEndsTheNextRun) {
  if (!loop_) return;
  loop_->stop();
  EXPECT_TRUE(loop_->run().has_value());
}

TEST_P(EventLoopConformance, StopFromACallbackEndsRun) {
  if (!loop_) return;
  int calls = 0;
  ASSERT_TRUE(loop_->add_timer(1ms, true, [&] {
    if (++calls == 2) loop_->stop();
  }));
  EXPECT_TRUE(loop_->run().has_value());
  EXPECT_EQ(calls, 2);
}

TEST_P(EventLoopConformance, WakeInterruptsABlockingRunOnce) {
  if (!loop_) return;
  // Whether wake() lands before or during the wait, run_once(nullopt) must return.
  std::thread waker([&] { loop_->wake(); });
  const auto ran = loop_->run_once(std::nullopt);
  waker.join();
  ASSERT_TRUE(ran.has_value()) << ran.error().to_string();
  EXPECT_EQ(*ran, 0u);
}

TEST_P(EventLoopConformance, RunOnceWithZeroTimeoutDoesNotBlock) {
  if (!loop_) return;
  Fd efd = make_test_eventfd(true);
  ASSERT_TRUE(loop_->watch_eventfd(efd.get(), [](std::uint64_t) {}));
  for (int i = 0; i < 10; ++i) {
    const auto ran = loop_->run_once(0ns);
    ASSERT_TRUE(ran.has_value()) << ran.error().to_string();
    EXPECT_EQ(*ran, 0u);
  }
}

TEST_P(EventLoopConformance, RunOnceReturnsZeroAfterItsTimeout) {
  if (!loop_) return;
  const auto ran = loop_->run_once(5ms);
  ASSERT_TRUE(ran.has_value()) << ran.error().to_string();
  EXPECT_EQ(*ran, 0u);
}

TEST_P(EventLoopConformance, RunOnceCountsTheCallbacksItRan) {
  if (!loop_) return;
  Fd e1 = make_test_eventfd(true);
  Fd e2 = make_test_eventfd(true);
  ASSERT_TRUE(loop_->watch_eventfd(e1.get(), [](std::uint64_t) {}));
  ASSERT_TRUE(loop_->watch_eventfd(e2.get(), [](std::uint64_t) {}));
  add_to_eventfd(e1.get(), 1);
  add_to_eventfd(e2.get(), 1);
  std::size_t total = 0;
  ASSERT_TRUE(run_until([&] {
    total += *loop_->run_once(0ns);
    return total >= 2;
  }));
  EXPECT_EQ(total, 2u);
}

TEST_P(EventLoopConformance, DestroyingALoopWithPendingWatchesLeaksNothing) {
  if (!loop_) return;
  loop_.reset();
  const std::size_t fds_before = floe::test::count_open_fds();
  {
    auto loop = make_loop({.backend = GetParam()});
    ASSERT_TRUE(loop);
    Fd blocking = make_test_eventfd(false);
    Fd nonblocking = make_test_eventfd(true);
    auto [rd, wr] = make_pipe();
    if (GetParam() == LoopBackend::kIoUring) {
      ASSERT_TRUE(loop->watch_eventfd(blocking.get(), [](std::uint64_t) {}));
    }
    ASSERT_TRUE(loop->watch_eventfd(nonblocking.get(), [](std::uint64_t) {}));
    ASSERT_TRUE(loop->watch_readable(rd.get(), [] {}));
    ASSERT_TRUE(loop->add_timer(1h, false, [] {}));
    ASSERT_TRUE(loop->add_timer(1h, true, [] {}));
    auto cancelled = loop->add_timer(1h, true, [] {});
    ASSERT_TRUE(cancelled);
    ASSERT_TRUE(loop->run_once(0ns).has_value());  // the ops are now in the kernel
    loop->cancel(*cancelled);                      // and this cancel is not yet submitted
    // A watch that has never been submitted at all.
    ASSERT_TRUE(loop->watch_readable(rd.get(), [] {}));
  }
  EXPECT_EQ(floe::test::count_open_fds(), fds_before);
}

TEST_P(EventLoopConformance, EventfdWrittenByAnotherThreadDeliversEveryIncrement) {
  if (!loop_) return;
  const std::uint64_t writes = floe::test::scaled(100'000, 1'000);
  for (const bool nonblocking : {false, true}) {
    SCOPED_TRACE(nonblocking ? "non-blocking eventfd" : "blocking eventfd");
    if (!nonblocking && GetParam() == LoopBackend::kEpoll) continue;  // epoll needs EFD_NONBLOCK
    Fd efd = make_test_eventfd(nonblocking);
    std::uint64_t sum = 0;
    auto id = loop_->watch_eventfd(efd.get(), [&](std::uint64_t v) {
      sum += v;
      if (sum >= writes) loop_->stop();
    });
    ASSERT_TRUE(id);
    std::thread producer([&, fd = efd.get()] {
      for (std::uint64_t i = 0; i < writes; ++i) {
        const std::uint64_t one = 1;
        ASSERT_EQ(::write(fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
      }
    });
    // Hang guard: a stuck loop is stopped from outside rather than blocking the suite forever.
    std::atomic<bool> finished{false};
    std::thread guard([&] {
      const auto give_up = std::chrono::steady_clock::now() + kHangGuard * 3;
      while (!finished.load(std::memory_order_acquire)) {
        if (std::chrono::steady_clock::now() > give_up) {
          ADD_FAILURE() << "hang guard expired";
          loop_->stop();
          return;
        }
        std::this_thread::sleep_for(1ms);
      }
    });
    EXPECT_TRUE(loop_->run().has_value());
    finished.store(true, std::memory_order_release);
    producer.join();
    guard.join();
    EXPECT_EQ(sum, writes);
    loop_->cancel(*id);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, EventLoopConformance,
                         ::testing::Values(LoopBackend::kIoUring, LoopBackend::kEpoll),
                         [](const ::testing::TestParamInfo<LoopBackend>& info) {
                           return info.param == LoopBackend::kIoUring ? std::string("IoUring")
                                                                      : std::string("Epoll");
                         });

// Restores an environment variable when the test ends.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(EventLoopFactory, AutoWithEnvironmentEpollYieldsEpoll) {
  const ScopedEnv env("FLOE_LOOP_BACKEND", "epoll");
  auto loop = EventLoop::create({.backend = LoopBackend::kAuto});
  ASSERT_TRUE(loop) << loop.error().to_string();
  EXPECT_EQ((*loop)->backend(), LoopBackend::kEpoll);
}

TEST(EventLoopFactory, ForcedBackendIgnoresTheEnvironment) {
  const ScopedEnv env("FLOE_LOOP_BACKEND", "io_uring");
  auto loop = EventLoop::create({.backend = LoopBackend::kEpoll});
  ASSERT_TRUE(loop) << loop.error().to_string();
  EXPECT_EQ((*loop)->backend(), LoopBackend::kEpoll);
}

TEST(EventLoopFactory, AutoWithAnUnknownEnvironmentValueStillWorks) {
  const ScopedEnv env("FLOE_LOOP_BACKEND", "kqueue");
  auto loop = EventLoop::create({.backend = LoopBackend::kAuto});
  ASSERT_TRUE(loop) << loop.error().to_string();
  EXPECT_NE((*loop)->backend(), LoopBackend::kAuto);
}

// Makes io_uring_setup fail with EPERM for the calling thread only, as a container's seccomp
// profile does. False if seccomp is unavailable.
bool refuse_io_uring_on_this_thread() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  const sock_fprog program{.len = static_cast<unsigned short>(std::size(filter)), .filter = filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) == 0;
}

TEST(EventLoopFactory, AutoFallsBackToEpollWhenTheKernelRefusesIoUring) {
  const ScopedEnv env("FLOE_LOOP_BACKEND", "auto");
  // A thread of its own: the filter dies with it.
  std::thread([] {
    if (!refuse_io_uring_on_this_thread()) GTEST_SKIP() << "seccomp unavailable";
    auto forced = EventLoop::create({.backend = LoopBackend::kIoUring});
    ASSERT_FALSE(forced.has_value());
    EXPECT_EQ(forced.error().code, EPERM) << forced.error().to_string();
    auto loop = EventLoop::create({.backend = LoopBackend::kAuto});
    ASSERT_TRUE(loop) << loop.error().to_string();
    EXPECT_EQ((*loop)->backend(), LoopBackend::kEpoll);
  }).join();
}

TEST(EventLoopFactory, BackendNamesRoundTrip) {
  for (const auto b : {LoopBackend::kAuto, LoopBackend::kIoUring, LoopBackend::kEpoll}) {
    EXPECT_EQ(parse_loop_backend(to_string(b)), b);
  }
  EXPECT_EQ(parse_loop_backend("uring"), LoopBackend::kIoUring);
  EXPECT_EQ(parse_loop_backend("select"), std::nullopt);
}

}  // namespace
}  // namespace floe::ipc
