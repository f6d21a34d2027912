// The SDK's futex bridge under load: producer threads push into 140 futex-mode rings (two
// futex_waitv bridges' worth); one consumer thread sleeps on the rings' eventfds the way the
// provider does (prepare_sleep, then epoll), the bridges turn the producers' FUTEX_WAKEs into
// eventfd signals, and the consumer keeps removing rings from their bridge and adding them back
// meanwhile. Every record must arrive exactly once and in order; a lost wakeup shows as a hang,
// which the hang guard turns into a failure.
#include <sys/epoll.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "../../provider-sdk/src/futex_bridge.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/ring.hpp"
#include "support/environment.hpp"

namespace floe::sdk::detail {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kRings = 140;
constexpr std::size_t kProducers = 4;
constexpr std::size_t kCapacity = 1024;

struct FreeDeleter {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};

struct TestRing {
  std::unique_ptr<std::byte, FreeDeleter> memory;
  ipc::Fd eventfd;
  std::optional<ipc::RingProducer> producer;
  std::optional<ipc::RingConsumer> consumer;
  FutexBridge* bridge = nullptr;
  std::uint64_t next = 0;  // consumer: the sequence number expected next
};

TEST(FutexBridgeStress, EveryRecordArrivesOnceThroughBridgesThatChangeUnderLoad) {
  const std::uint64_t per_ring = test::scaled(3000, 100);
  std::vector<TestRing> rings(kRings);
  const ipc::Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  ASSERT_TRUE(epoll);
  for (std::size_t i = 0; i < kRings; ++i) {
    TestRing& r = rings[i];
    r.memory.reset(static_cast<std::byte*>(std::aligned_alloc(kCacheLine, ipc::ring_footprint(kCapacity))));
    ASSERT_TRUE(r.memory);
    const std::span<std::byte> mem(r.memory.get(), ipc::ring_footprint(kCapacity));
    ASSERT_TRUE(ipc::ring_init(mem, {.capacity = kCapacity, .notify = ipc::NotifyMode::kFutex}));
    auto efd = ipc::make_eventfd(/*nonblocking=*/true);
    ASSERT_TRUE(efd);
    r.eventfd = std::move(*efd);
    auto p = ipc::RingProducer::attach(mem);
    auto c = ipc::RingConsumer::attach(mem, r.eventfd.get());
    ASSERT_TRUE(p && c);
    r.producer.emplace(std::move(*p));
    r.consumer.emplace(std::move(*c));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    ASSERT_EQ(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, r.eventfd.get(), &ev), 0);
  }

  FutexBridges bridges;
  for (TestRing& r : rings) {
    r.bridge = bridges.add(r.consumer->header().futex_word, r.eventfd.get());
    ASSERT_NE(r.bridge, nullptr);
  }
  EXPECT_EQ(bridges.threads(), (kRings + FutexBridge::slots() - 1) / FutexBridge::slots());

  std::atomic<bool> failed{false};
  std::vector<std::thread> producers;
  // On an early return (a failed assertion) the producers are told to stop and joined.
  struct Joiner {
    std::atomic<bool>& failed;
    std::vector<std::thread>& threads;
    ~Joiner() {
      if (std::none_of(threads.begin(), threads.end(), [](auto& t) { return t.joinable(); })) return;
      failed.store(true, std::memory_order_relaxed);
      for (auto& t : threads) t.join();
    }
  } joiner{failed, producers};
  for (std::size_t t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      for (std::uint64_t seq = 0; seq < per_ring && !failed.load(std::memory_order_relaxed); ++seq) {
        for (std::size_t i = t; i < kRings; i += kProducers) {
          const auto bytes = std::as_bytes(std::span(&seq, 1));
          if (!rings[i].producer->push_wait(1, bytes, 60s)) {
            failed.store(true, std::memory_order_relaxed);
            return;
          }
        }
        // Now and then let the consumer run dry and go to sleep, so that most rounds need a wake.
        if (seq % 8 == 0) std::this_thread::yield();
      }
    });
  }

  std::uint64_t received = 0;
  // The provider's drain: until empty, then announce the sleep; true if the ring is done.
  auto drain = [&](TestRing& r) {
    for (;;) {
      auto n = r.consumer->drain([&](const ipc::RecordView& v) {
        std::uint64_t seq = 0;
        ASSERT_EQ(v.payload.size(), sizeof seq);
        std::memcpy(&seq, v.payload.data(), sizeof seq);
        ASSERT_EQ(seq, r.next);
        ++r.next;
        ++received;
      });
      ASSERT_TRUE(n);
      if (*n > 0) continue;
      if (r.consumer->prepare_sleep()) return;
    }
  };
  for (TestRing& r : rings) drain(r);

  std::uint64_t churned = 0;
  const std::uint64_t total = per_ring * kRings;
  auto last_progress = std::chrono::steady_clock::now();
  while (received < total && !failed.load(std::memory_order_relaxed)) {
    epoll_event events[64];
    const int n = ::epoll_wait(epoll.get(), events, 64, 1000);
    ASSERT_GE(n, 0) << std::strerror(errno);
    const std::uint64_t before = received;
    for (int e = 0; e < n; ++e) {
      TestRing& r = rings[events[e].data.u64];
      (void)ipc::eventfd_drain(r.eventfd.get());
      r.consumer->finish_sleep();
      drain(r);
      if (HasFatalFailure()) return;
    }
    // Churn: now and then a ring leaves its bridge and comes back (possibly to another), as on a
    // detach and a new grant; it is then drained afresh, as the provider does after a grant.
    if (received / 97 > churned) {
      churned = received / 97;
      TestRing& r = rings[churned % kRings];
      r.bridge->remove(r.consumer->header().futex_word);
      r.bridge = bridges.add(r.consumer->header().futex_word, r.eventfd.get());
      ASSERT_NE(r.bridge, nullptr);
      r.consumer->finish_sleep();
      drain(r);
      if (HasFatalFailure()) return;
    }
    if (received != before) {
      last_progress = std::chrono::steady_clock::now();
    } else {
      // Hang guard only (a lost wakeup stalls forever), not a timing threshold.
      if (std::chrono::steady_clock::now() - last_progress > 120s) {
        for (std::size_t i = 0; i < kRings; ++i) {
          const ipc::RingHeader& h = rings[i].consumer->header();
          if (rings[i].next == per_ring) continue;
          ADD_FAILURE() << "ring " << i << ": " << rings[i].next << " of " << per_ring << " received, sleeping "
                        << h.consumer_sleeping.load() << ", futex word " << h.futex_word.load() << ", tail "
                        << h.tail.load() << ", head " << h.head.load();
        }
        FAIL() << "no record for 120 s: a lost wakeup";
      }
    }
  }
  for (auto& p : producers) p.join();
  EXPECT_FALSE(failed.load());
  EXPECT_EQ(received, total);
  for (TestRing& r : rings) EXPECT_EQ(r.next, per_ring);
  EXPECT_GT(churned, 0U);
  std::uint64_t wakeups = 0, signals = 0;
  for (TestRing& r : rings) {
    wakeups += r.consumer->header().consumer_wakeups.load();
    signals += r.consumer->header().notifications_sent.load();
  }
  std::printf("%llu records, %llu futex wakes by the producers, %llu consumer wakeups, %llu bridge changes\n",
              static_cast<unsigned long long>(received), static_cast<unsigned long long>(signals),
              static_cast<unsigned long long>(wakeups), static_cast<unsigned long long>(churned));
  for (TestRing& r : rings) r.bridge->remove(r.consumer->header().futex_word);
}

}  // namespace
}  // namespace floe::sdk::detail
