// Two threads stream records through one ring with random sizes, random batches and random pauses
// on both sides, in every notification mode. The consumer blocks in wait() with no timeout, so a
// lost wakeup hangs the test; a watchdog turns that hang into an abort with the ring's state.
#include "floe/ipc/ring.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/environment.hpp"
#include "support/watchdog.hpp"

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

/// Aborts the process (with `describe()` on stderr) unless destroyed within `limit`.
class RingMemory {
 public:
  explicit RingMemory(std::size_t capacity)
      : size_(ring_footprint(capacity)),
        bytes_(static_cast<std::byte*>(::operator new(size_, std::align_val_t{kCacheLine}))) {}
  ~RingMemory() { ::operator delete(bytes_, std::align_val_t{kCacheLine}); }
  RingMemory(const RingMemory&) = delete;
  RingMemory& operator=(const RingMemory&) = delete;
  [[nodiscard]] std::span<std::byte> span() const { return {bytes_, size_}; }
  [[nodiscard]] const RingHeader& header() const { return *reinterpret_cast<const RingHeader*>(bytes_); }

 private:
  std::size_t size_;
  std::byte* bytes_;
};

std::string describe(const RingHeader& h) {
  return "tail " + std::to_string(h.tail.load()) + " head " + std::to_string(h.head.load()) + " pushed " +
         std::to_string(h.records_pushed.load()) + " popped " + std::to_string(h.records_popped.load()) +
         " consumer_sleeping " + std::to_string(h.consumer_sleeping.load()) + " notifications " +
         std::to_string(h.notifications_sent.load()) + " wakeups " + std::to_string(h.consumer_wakeups.load());
}

/// A record's payload: its sequence number, then bytes derived from it.
void fill(std::byte* p, std::uint64_t seq, std::size_t size) {
  std::memcpy(p, &seq, sizeof seq);
  for (std::size_t i = sizeof seq; i < size; ++i) p[i] = static_cast<std::byte>((seq * 31 + i) & 0xFF);
}

/// Empty string if `view` is record `seq`, else what is wrong with it.
std::string check(const RecordView& view, std::uint64_t seq) {
  if (view.payload.size() < sizeof seq) return "record " + std::to_string(seq) + " shorter than 8 bytes";
  std::uint64_t got = 0;
  std::memcpy(&got, view.payload.data(), sizeof got);
  if (got != seq) return "expected record " + std::to_string(seq) + ", got " + std::to_string(got);
  if (view.type != (seq & 0x7FFF)) return "record " + std::to_string(seq) + " has the wrong type";
  // Reserved records carry their size in flags; push_wait() has no flags parameter and sends 0.
  if (view.flags != 0 && view.flags != (view.payload.size() & 0xFFFF)) {
    return "record " + std::to_string(seq) + " has the wrong flags";
  }
  for (std::size_t i = sizeof seq; i < view.payload.size(); ++i) {
    if (view.payload[i] != static_cast<std::byte>((seq * 31 + i) & 0xFF)) {
      return "record " + std::to_string(seq) + " byte " + std::to_string(i) + " differs";
    }
  }
  return {};
}

/// Random short pause: usually nothing, sometimes a yield, rarely a sleep of a few microseconds.
void maybe_pause(std::mt19937_64& rng) {
  const auto r = rng() % 4096;
  if (r < 2) {
    std::this_thread::sleep_for(std::chrono::microseconds(1 + rng() % 200));
  } else if (r < 40) {
    std::this_thread::yield();
  }
}

std::size_t random_size(std::mt19937_64& rng, std::size_t max_payload) {
  // Mostly small records, some medium, a few as large as the ring allows.
  const auto r = rng() % 100;
  if (r < 80) return 8 + rng() % 120;
  if (r < 98) return 8 + rng() % 1024;
  return 8 + rng() % (max_payload - 7);
}

struct StreamResult {
  std::uint64_t received = 0;
  std::uint64_t errors = 0;
  std::string first_error;
};

/// Producer: random batches (try_reserve ... publish) and single pushes, push_wait when full.
void produce(RingProducer& producer, std::uint64_t total, std::uint64_t seed, const std::atomic<bool>& stop) {
  std::mt19937_64 rng(seed);
  std::uint64_t seq = 0;
  std::vector<std::byte> buffer(producer.max_payload());
  while (seq < total && !stop.load(std::memory_order_relaxed)) {
    const std::uint64_t batch = rng() % 4 == 0 ? 1 + rng() % 16 : 1;
    bool stuck = false;
    for (std::uint64_t b = 0; b < batch && seq < total; ++b) {
      const std::size_t size = random_size(rng, producer.max_payload());
      const auto type = static_cast<std::uint16_t>(seq & 0x7FFF);
      const auto flags = static_cast<std::uint16_t>(size & 0xFFFF);
      if (std::byte* p = producer.try_reserve(type, static_cast<std::uint32_t>(size), flags)) {
        fill(p, seq++, size);
        continue;
      }
      // Full: publish what is reserved, then wait for room for this one.
      producer.publish();
      fill(buffer.data(), seq, size);
      while (!producer.push_wait(type, std::span(buffer.data(), size), 100ms)) {
        if (stop.load(std::memory_order_relaxed)) return;
      }
      ++seq;
      stuck = true;
      break;
    }
    if (!stuck) producer.publish();
    maybe_pause(rng);
  }
}

/// Consumer: wait() with no timeout, then drain a random number of records, checking each.
StreamResult consume(RingConsumer& consumer, std::uint64_t total, std::uint64_t seed, std::atomic<bool>& stop) {
  std::mt19937_64 rng(seed);
  StreamResult r;
  while (r.received < total) {
    if (!consumer.wait()) continue;
    const auto n = consumer.drain(
        [&](const RecordView& v) {
          if (std::string e = check(v, r.received); !e.empty()) {
            if (r.errors++ == 0) r.first_error = e;
          }
          ++r.received;
        },
        1 + rng() % 64);
    if (!n) {
      r.first_error = n.error().to_string();
      ++r.errors;
      stop.store(true, std::memory_order_relaxed);
      break;
    }
    maybe_pause(rng);
  }
  return r;
}

class RingStress : public ::testing::TestWithParam<NotifyMode> {};

TEST_P(RingStress, RandomSizesBatchesAndPausesArriveInOrderAndIntact) {
  const NotifyMode mode = GetParam();
  const std::uint64_t total = test::scaled(2'000'000, 20'000);
  constexpr std::size_t kCapacity = 64 * 1024;
  RingMemory memory(kCapacity);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = kCapacity, .notify = mode, .poll_interval = 50us}));
  auto producer = RingProducer::attach(memory.span(), efd->get());
  auto consumer = RingConsumer::attach(memory.span(), efd->get());
  ASSERT_TRUE(producer.has_value() && consumer.has_value());

  test::Watchdog watchdog(120s, [&] { return std::string(to_string(mode)) + ": " + describe(memory.header()); });
  std::atomic<bool> stop{false};
  std::thread producer_thread([&] { produce(*producer, total, 1, stop); });
  const StreamResult r = consume(*consumer, total, 2, stop);
  producer_thread.join();

  EXPECT_EQ(r.errors, 0u) << r.first_error;
  EXPECT_EQ(r.received, total);
  const RingHeader& h = memory.header();
  EXPECT_EQ(h.records_pushed.load(), total);
  EXPECT_EQ(h.records_popped.load(), total);
  EXPECT_EQ(h.tail.load(), h.head.load());
  EXPECT_LE(h.high_water.load(), kCapacity);
  // Each signal needs a sleep announced by the consumer, and a publish to carry it.
  EXPECT_LE(h.notifications_sent.load(), total);
  if (mode == NotifyMode::kSpin || mode == NotifyMode::kPoll) {
    EXPECT_EQ(h.notifications_sent.load(), 0u);
  }
  std::printf("[ %s ] %llu records, %llu signals, %llu consumer wakeups, high water %llu\n",
              std::string(to_string(mode)).c_str(), static_cast<unsigned long long>(total),
              static_cast<unsigned long long>(h.notifications_sent.load()),
              static_cast<unsigned long long>(h.consumer_wakeups.load()),
              static_cast<unsigned long long>(h.high_water.load()));
}

INSTANTIATE_TEST_SUITE_P(AllModes, RingStress,
                         ::testing::Values(NotifyMode::kEventfd, NotifyMode::kFutex, NotifyMode::kSpin,
                                           NotifyMode::kPoll),
                         [](const auto& info) { return std::string(to_string(info.param)); });

/// One record at a time: the producer pushes a record at a random moment while the consumer is on
/// its way to sleep, then waits until it is consumed. Each record is the last one in flight, so a
/// single lost wakeup hangs the consumer (and the watchdog aborts).
class RingHandoff : public ::testing::TestWithParam<NotifyMode> {};

TEST_P(RingHandoff, SingleRecordsHandedOverOneAtATimeNeverLoseAWakeup) {
  const NotifyMode mode = GetParam();
  const std::uint64_t total = test::scaled(200'000, 5'000);
  RingMemory memory(4096);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 4096, .notify = mode}));
  auto producer = RingProducer::attach(memory.span(), efd->get());
  auto consumer = RingConsumer::attach(memory.span(), efd->get());
  ASSERT_TRUE(producer.has_value() && consumer.has_value());
  test::Watchdog watchdog(120s, [&] { return std::string(to_string(mode)) + ": " + describe(memory.header()); });

  std::thread producer_thread([&] {
    std::mt19937_64 rng(7);
    for (std::uint64_t seq = 0; seq < total; ++seq) {
      // A random delay lands the publish anywhere in the consumer's path to sleep.
      // Mostly within the consumer's few hundred nanoseconds from release() to blocking.
      const auto delay = rng() % 8 == 0 ? rng() % 4096 : rng() % 128;
      for (auto spins = delay; spins > 0; --spins) cpu_relax();
      EXPECT_TRUE(producer->try_push(1, std::as_bytes(std::span(&seq, 1))));
      for (std::uint32_t i = 1; memory.header().head.load(std::memory_order_acquire) != memory.header().tail.load();
           ++i) {
        if (i % 256 == 0) std::this_thread::yield();
        cpu_relax();
      }
    }
  });
  std::uint64_t out_of_order = 0;
  for (std::uint64_t seq = 0; seq < total; ++seq) {
    ASSERT_TRUE(consumer->wait());
    RecordView view;
    ASSERT_EQ(consumer->peek(view), PopStatus::kRecord);
    std::uint64_t got = 0;
    std::memcpy(&got, view.payload.data(), sizeof got);
    if (got != seq) ++out_of_order;
    consumer->pop();
    consumer->release();
  }
  producer_thread.join();
  EXPECT_EQ(out_of_order, 0u);
  EXPECT_GT(memory.header().notifications_sent.load(), 0u);
}

INSTANTIATE_TEST_SUITE_P(BlockingModes, RingHandoff, ::testing::Values(NotifyMode::kEventfd, NotifyMode::kFutex),
                         [](const auto& info) { return std::string(to_string(info.param)); });

/// Streams `total` records to a consumer that never sleeps (it spins on has_data), in `mode`.
std::uint64_t stream_to_busy_consumer(NotifyMode mode, std::uint64_t total, const RingHeader*& header_out,
                                      RingMemory& memory, int efd) {
  EXPECT_TRUE(ring_init(memory.span(), {.capacity = 64 * 1024, .notify = mode}));
  auto producer = RingProducer::attach(memory.span(), efd);
  auto consumer = RingConsumer::attach(memory.span(), efd);
  EXPECT_TRUE(producer.has_value() && consumer.has_value());
  header_out = &memory.header();
  test::Watchdog watchdog(120s, [&] { return describe(memory.header()); });
  std::thread producer_thread([&] {
    std::array<std::byte, 64> payload{};
    for (std::uint64_t seq = 0; seq < total; ++seq) {
      std::memcpy(payload.data(), &seq, sizeof seq);
      while (!producer->push_wait(1, payload, 1s)) {
      }
    }
  });
  std::uint64_t received = 0;
  std::uint64_t out_of_order = 0;
  while (received < total) {
    if (!consumer->has_data()) {
      cpu_relax();
      continue;
    }
    const auto n = consumer->drain([&](const RecordView& v) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, v.payload.data(), sizeof seq);
      if (seq != received) ++out_of_order;
      ++received;
    });
    EXPECT_TRUE(n.has_value());
    if (!n) break;
  }
  producer_thread.join();
  EXPECT_EQ(out_of_order, 0u);
  return received;
}

TEST(RingStressWakeup, ConsumerThatNeverSleepsCostsNoSignalInSpinMode) {
  const std::uint64_t total = test::scaled(1'000'000, 10'000);
  RingMemory memory(64 * 1024);
  const RingHeader* h = nullptr;
  EXPECT_EQ(stream_to_busy_consumer(NotifyMode::kSpin, total, h, memory, -1), total);
  EXPECT_EQ(h->notifications_sent.load(), 0u);
}

TEST(RingStressWakeup, ConsumerThatNeverSleepsCostsNoSignalInEventfdMode) {
  const std::uint64_t total = test::scaled(1'000'000, 10'000);
  RingMemory memory(64 * 1024);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  const RingHeader* h = nullptr;
  EXPECT_EQ(stream_to_busy_consumer(NotifyMode::kEventfd, total, h, memory, efd->get()), total);
  EXPECT_EQ(h->notifications_sent.load(), 0u) << "the producer signalled a consumer that never slept";
  const auto pending = eventfd_drain(efd->get());
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(*pending, 0u);
}

TEST(RingStressWakeup, EventLoopStyleConsumerGetsExactlyOneEventfdCountPerSignal) {
  // The consumer blocks on a non-blocking eventfd itself (as the epoll/io_uring loops do), using
  // prepare_sleep()/finish_sleep(). Every signal is one eventfd write of 1, and each needs a flag
  // raised by one prepare_sleep(): counts must agree exactly.
  const std::uint64_t total = test::scaled(500'000, 10'000);
  constexpr std::size_t kCapacity = 4096;
  RingMemory memory(kCapacity);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = kCapacity, .notify = NotifyMode::kEventfd}));
  auto producer = RingProducer::attach(memory.span(), efd->get());
  auto consumer = RingConsumer::attach(memory.span(), efd->get());
  ASSERT_TRUE(producer.has_value() && consumer.has_value());
  test::Watchdog watchdog(120s, [&] { return describe(memory.header()); });

  std::thread producer_thread([&] {
    std::mt19937_64 rng(3);
    std::array<std::byte, 32> payload{};
    for (std::uint64_t seq = 0; seq < total; ++seq) {
      if (seq == total / 2) {
        // Once, wait for the consumer to announce a sleep, so at least one signal is certain.
        while (memory.header().consumer_sleeping.load(std::memory_order_relaxed) == 0) std::this_thread::yield();
      }
      std::memcpy(payload.data(), &seq, sizeof seq);
      while (!producer->push_wait(1, payload, 1s)) {
      }
      maybe_pause(rng);
    }
  });
  std::uint64_t received = 0;
  std::uint64_t out_of_order = 0;
  std::uint64_t sleeps_announced = 0;
  std::uint64_t counts_read = 0;
  while (received < total) {
    const auto n = consumer->drain([&](const RecordView& v) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, v.payload.data(), sizeof seq);
      if (seq != received) ++out_of_order;
      ++received;
    });
    ASSERT_TRUE(n.has_value()) << n.error().to_string();
    if (*n > 0 || received == total) continue;
    ++sleeps_announced;
    if (!consumer->prepare_sleep()) continue;
    pollfd pfd{efd->get(), POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, -1), 1);
    const auto count = eventfd_drain(efd->get());
    ASSERT_TRUE(count.has_value());
    counts_read += *count;
    consumer->finish_sleep();
  }
  producer_thread.join();
  const auto leftover = eventfd_drain(efd->get());
  ASSERT_TRUE(leftover.has_value());
  counts_read += *leftover;

  EXPECT_EQ(out_of_order, 0u);
  const std::uint64_t signals = memory.header().notifications_sent.load();
  EXPECT_EQ(counts_read, signals);
  EXPECT_LE(signals, sleeps_announced) << "more signals than sleeps: the exchange let two through";
  EXPECT_GT(signals, 0u) << "the producer waited for the consumer to sleep, then pushed: no signal";
}

}  // namespace
}  // namespace floe::ipc
