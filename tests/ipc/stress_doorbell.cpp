// Several producer threads, each feeding rings of its own, ring one doorbell; one consumer thread
// takes the slots, drains those rings and sleeps on the doorbell's eventfd with no timeout. Random
// batches and pauses on every side. A lost wakeup hangs the consumer, which the watchdog turns
// into an abort with the doorbell's state; a record lost, duplicated or out of order fails.
#include "floe/ipc/doorbell.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/notify.hpp"
#include "floe/ipc/ring.hpp"
#include "support/environment.hpp"
#include "support/watchdog.hpp"

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

struct Aligned {
  explicit Aligned(std::size_t n) : size(n), bytes(static_cast<std::byte*>(::operator new(n, std::align_val_t{64}))) {
    std::memset(bytes, 0, n);
  }
  ~Aligned() { ::operator delete(bytes, std::align_val_t{64}); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  [[nodiscard]] std::span<std::byte> span() const { return {bytes, size}; }
  std::size_t size;
  std::byte* bytes;
};

void pause(std::mt19937_64& rng) {
  const auto r = rng() % 64;
  if (r == 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
  } else if (r < 4) {
    std::this_thread::yield();
  }
}

struct Lane {
  explicit Lane(std::uint32_t s) : slot(s), memory(ring_footprint(1024)) {}
  std::uint32_t slot;
  Aligned memory;
  std::optional<RingProducer> producer;
  std::optional<RingConsumer> consumer;
  std::uint64_t next_expected = 0;  // consumer side
  std::string error;                // consumer side
};

void run(unsigned producers, unsigned lanes_each, std::uint64_t records_per_lane) {
  const std::uint32_t slots = 4096;
  Aligned bell_memory(doorbell_footprint(slots));
  ASSERT_TRUE(doorbell_init(bell_memory.span(), slots));
  auto consumer_bell = Doorbell::attach(bell_memory.span());
  auto producer_bell = Doorbell::attach(bell_memory.span());
  ASSERT_TRUE(consumer_bell && producer_bell);
  auto efd = make_eventfd(/*nonblocking=*/true);
  ASSERT_TRUE(efd);

  // Slots spread over several pending words and both summary halves.
  std::vector<std::unique_ptr<Lane>> lanes;
  for (unsigned p = 0; p < producers; ++p) {
    for (unsigned l = 0; l < lanes_each; ++l) lanes.push_back(std::make_unique<Lane>((p * 1361 + l * 67) % slots));
  }
  std::vector<Lane*> by_slot(slots, nullptr);
  for (auto& lane : lanes) {
    ASSERT_EQ(by_slot[lane->slot], nullptr) << "test slots must differ";
    by_slot[lane->slot] = lane.get();
    ASSERT_TRUE(ring_init(lane->memory.span(), {.capacity = 1024, .notify = NotifyMode::kEventfd}));
    auto p = RingProducer::attach(lane->memory.span(), efd->get());
    auto c = RingConsumer::attach(lane->memory.span(), efd->get());
    ASSERT_TRUE(p && c);
    lane->producer.emplace(std::move(*p));
    lane->producer->use_doorbell(&*producer_bell, lane->slot, efd->get());
    lane->consumer.emplace(std::move(*c));
  }
  const std::uint64_t total = records_per_lane * lanes.size();
  std::atomic<std::uint64_t> received{0};
  std::uint64_t sleep_attempts = 0;  // prepare_sleep() calls: each raises the flag at most once

  test::Watchdog watchdog(std::chrono::seconds(120), [&] {
    const auto& h = consumer_bell->header();
    return "received " + std::to_string(received.load()) + " of " + std::to_string(total) + ", sleeping " +
           std::to_string(h.sleeping.load()) + ", signals " + std::to_string(h.signals.load()) + ", wakeups " +
           std::to_string(h.wakeups.load()) + ", pending " + (consumer_bell->any_pending() ? "yes" : "no");
  });

  std::thread consumer([&] {
    std::mt19937_64 rng(7);
    std::uint64_t got = 0;
    auto drain = [&](std::uint32_t slot) {
      Lane* lane = by_slot[slot];
      if (lane == nullptr) return;
      auto n = lane->consumer->drain([&](const RecordView& v) {
        std::uint64_t seq = 0;
        if (v.payload.size() == sizeof seq) std::memcpy(&seq, v.payload.data(), sizeof seq);
        if (seq != lane->next_expected && lane->error.empty()) {
          lane->error = "slot " + std::to_string(slot) + ": expected " + std::to_string(lane->next_expected) +
                        ", got " + std::to_string(seq);
        }
        lane->next_expected = seq + 1;
        ++got;
      });
      if (!n && lane->error.empty()) lane->error = n.error().to_string();
      received.store(got, std::memory_order_relaxed);
    };
    while (got < total) {
      consumer_bell->take(drain);
      if (got >= total) break;
      pause(rng);
      ++sleep_attempts;
      if (!consumer_bell->prepare_sleep()) continue;
      pollfd pfd{efd->get(), POLLIN, 0};
      while (::poll(&pfd, 1, -1) < 0) {
      }
      (void)eventfd_drain(efd->get());
      consumer_bell->finish_sleep();
    }
  });

  std::vector<std::thread> threads;
  for (unsigned p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(100 + p);
      std::vector<std::uint64_t> next(lanes_each, 0);
      std::uint64_t left = records_per_lane * lanes_each;
      while (left > 0) {
        const unsigned l = static_cast<unsigned>(rng() % lanes_each);
        Lane& lane = *lanes[p * lanes_each + l];
        const auto batch = 1 + rng() % 8;
        for (std::uint64_t b = 0; b < batch && next[l] < records_per_lane; ++b) {
          const std::uint64_t seq = next[l];
          const std::span<const std::byte> payload{reinterpret_cast<const std::byte*>(&seq), sizeof seq};
          ASSERT_TRUE(lane.producer->push_wait(1, payload, std::chrono::seconds(60)));
          ++next[l];
          --left;
        }
        pause(rng);
      }
    });
  }
  for (auto& t : threads) t.join();
  consumer.join();
  for (auto& lane : lanes) {
    EXPECT_EQ(lane->error, "");
    EXPECT_EQ(lane->next_expected, records_per_lane) << "slot " << lane->slot;
  }
  // A raised flag costs producers at most one signal, however many find it up.
  const auto& h = consumer_bell->header();
  EXPECT_LE(h.signals.load(), sleep_attempts);
  // The point is the sleeping path: it must have been taken (the pauses make producers lag).
  EXPECT_GT(h.wakeups.load(), 0U);
  std::printf("%llu records, %llu sleep attempts, %llu signals, %llu wakeups, %llu slots taken\n",
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(sleep_attempts),
              static_cast<unsigned long long>(h.signals.load()), static_cast<unsigned long long>(h.wakeups.load()),
              static_cast<unsigned long long>(h.takes.load()));
}

TEST(DoorbellStress, ManyProducersManyRingsOneSleepingConsumerLoseNothing) {
  run(3, 4, test::scaled(40000, 2000));
}

TEST(DoorbellStress, OneProducerOneRingEveryRecordAWakeup) {
  run(1, 1, test::scaled(30000, 2000));
}

}  // namespace
}  // namespace floe::ipc
