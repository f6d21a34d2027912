// A hostile peer in a real separate process scribbles over a ring it shares with us: its indices,
// its record headers, its data, its whole header. Our consumer must report kCorrupt with a message
// and carry on; our producer must never write outside the data area. The ring sits at the very end
// of the mapping, so a read past its data area leaves the mapping (and the ASan build checks the
// heap-backed unit tests byte for byte).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "support/child_process.hpp"
#include "support/environment.hpp"

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

constexpr int kChildRegionFd = 3;
constexpr int kChildEventfd = 4;
constexpr std::size_t kCapacity = 4096;
constexpr std::size_t kCanaryBytes = 4096;
constexpr std::byte kCanary{0xA5};

enum class Attack : int {
  kTail = 0,          // random tail values, honest records in between
  kRecordHeaders = 1, // random bytes over published record headers
  kData = 2,          // random bytes anywhere in the data area while producing
  kWholeRing = 3,     // random bytes over the whole ring: header lines and data
  kCount = 4,
};

/// The ring's place in a region: at the very end of the mapping, after a canary.
struct Layout {
  std::size_t ring_offset;  // within the payload
  std::size_t ring_bytes;
};

Layout layout_of(const Region& region) {
  const std::size_t ring_bytes = ring_footprint(kCapacity);
  return {region.payload().size() - ring_bytes, ring_bytes};
}

Result<Region> make_region() {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t want = kRegionPayloadOffset + kCanaryBytes + ring_footprint(kCapacity);
  return Region::create({.name = "itest-hostile-ring", .size = (want + page - 1) / page * page});
}

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "hostile child: %s\n", what.c_str());
  return code;
}

// ---------------------------------------------------------------------------------------------
// Children. args: attack, seed.

/// Produces honest records and scribbles per the attack; ends with a violation no consumer can
/// miss (a tail far beyond any head), then signals.
FLOE_CHILD_ROLE(hostile_producer) {
  if (args.size() != 2) return child_fail(2, "usage: attack seed");
  const auto attack = static_cast<Attack>(std::stoi(args[0]));
  std::mt19937_64 rng(std::stoull(args[1]));
  auto region = Region::open(Fd(kChildRegionFd));
  if (!region) return child_fail(3, region.error().to_string());
  const Layout layout = layout_of(*region);
  const auto ring = region->payload().subspan(layout.ring_offset, layout.ring_bytes);
  auto producer = RingProducer::attach(ring, kChildEventfd);
  if (!producer) return child_fail(4, producer.error().to_string());
  RingHeader& h = producer->header();
  std::byte* data = ring.data() + sizeof(RingHeader);

  std::vector<std::byte> payload(64);
  for (int step = 0; step < 400; ++step) {
    for (auto& b : payload) b = static_cast<std::byte>(rng());
    (void)producer->try_push(1, std::span(payload).first(rng() % payload.size()));
    switch (attack) {
      case Attack::kTail:
        if (rng() % 8 == 0) h.tail.store(rng() % 4 == 0 ? rng() : h.tail.load() + rng() % 64, std::memory_order_release);
        break;
      case Attack::kRecordHeaders: {
        if (rng() % 8 == 0) {
          const std::size_t at = (h.tail.load() - 8 * (1 + rng() % 8)) & (kCapacity - 1) & ~std::size_t{7};
          const std::uint64_t junk = rng();
          std::memcpy(data + at, &junk, 8);
        }
        break;
      }
      case Attack::kData:
        for (int k = 0; k < 4; ++k) data[rng() % kCapacity] = static_cast<std::byte>(rng());
        break;
      case Attack::kWholeRing:
        for (int k = 0; k < 4; ++k) ring[rng() % ring.size()] = static_cast<std::byte>(rng());
        break;
      case Attack::kCount:
        break;
    }
    if (rng() % 16 == 0) eventfd_signal(kChildEventfd);
    if (rng() % 32 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
  }
  h.tail.store((std::uint64_t{1} << 62) + 8, std::memory_order_release);
  eventfd_signal(kChildEventfd);
  return 0;
}

/// Consumes nothing honestly: scribbles head (and the rest of its line), the sleeping flag and the
/// data while the parent produces.
FLOE_CHILD_ROLE(hostile_consumer) {
  if (args.size() != 2) return child_fail(2, "usage: attack seed");
  std::mt19937_64 rng(std::stoull(args[1]));
  auto region = Region::open(Fd(kChildRegionFd));
  if (!region) return child_fail(3, region.error().to_string());
  const Layout layout = layout_of(*region);
  const auto ring = region->payload().subspan(layout.ring_offset, layout.ring_bytes);
  auto& h = *reinterpret_cast<RingHeader*>(ring.data());
  const auto deadline = std::chrono::steady_clock::now() + 300ms;
  while (std::chrono::steady_clock::now() < deadline) {
    switch (rng() % 5) {
      case 0: h.head.store(rng(), std::memory_order_release); break;
      case 1: h.head.store(h.tail.load(std::memory_order_acquire) + 8 * (rng() % 8), std::memory_order_release); break;
      case 2: h.head.store(h.tail.load(std::memory_order_acquire) - kCapacity * (rng() % 3), std::memory_order_release); break;
      case 3: h.consumer_sleeping.store(static_cast<std::uint32_t>(rng() % 3), std::memory_order_relaxed); break;
      default: ring[sizeof(RingHeader) + rng() % kCapacity] = static_cast<std::byte>(rng()); break;
    }
    if (rng() % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Parent

struct Shared {
  Region region;
  Fd eventfd;
  std::span<std::byte> ring;
};

Shared make_shared_ring() {
  auto region = make_region();
  EXPECT_TRUE(region) << region.error().to_string();
  const Layout layout = layout_of(*region);
  auto canary = region->payload().first(layout.ring_offset);
  std::fill(canary.begin(), canary.end(), kCanary);
  const auto ring = region->payload().subspan(layout.ring_offset, layout.ring_bytes);
  EXPECT_EQ(ring.data() + ring.size(), region->data() + region->size()) << "ring must end the mapping";
  EXPECT_TRUE(ring_init(ring, {.capacity = kCapacity, .notify = NotifyMode::kEventfd}));
  auto efd = make_eventfd(/*nonblocking=*/true);
  EXPECT_TRUE(efd);
  return {std::move(*region), std::move(*efd), ring};
}

std::string attack_name(Attack a) {
  switch (a) {
    case Attack::kTail: return "tail";
    case Attack::kRecordHeaders: return "record-headers";
    case Attack::kData: return "data";
    case Attack::kWholeRing: return "whole-ring";
    case Attack::kCount: break;
  }
  return "?";
}

TEST(HostileRingPeer, ConsumerReportsCorruptionAndSurvivesEveryAttack) {
  const int rounds = static_cast<int>(test::scaled(12, 2));
  for (int attack = 0; attack < static_cast<int>(Attack::kCount); ++attack) {
    for (int round = 0; round < rounds; ++round) {
      const std::string label = attack_name(static_cast<Attack>(attack)) + " round " + std::to_string(round);
      SCOPED_TRACE(label);
      Shared shared = make_shared_ring();
      auto consumer = RingConsumer::attach(shared.ring, shared.eventfd.get());
      ASSERT_TRUE(consumer) << consumer.error().to_string();
      auto share = shared.region.share();
      ASSERT_TRUE(share);
      auto child = test::spawn_child("hostile_producer", {std::to_string(attack), std::to_string(1000 * attack + round)},
                                     {share->get(), shared.eventfd.get()});
      ASSERT_TRUE(child) << child.error().to_string();

      const std::byte* data_begin = shared.ring.data() + sizeof(RingHeader);
      const std::byte* data_end = data_begin + kCapacity;
      std::vector<std::byte> copy;
      std::uint64_t records = 0;
      bool corrupt = false;
      const auto deadline = std::chrono::steady_clock::now() + 60s;
      while (!corrupt && std::chrono::steady_clock::now() < deadline) {
        (void)consumer->wait(20ms);
        RecordView view;
        for (;;) {
          const PopStatus s = consumer->peek(view);
          if (s == PopStatus::kEmpty) break;
          if (s == PopStatus::kCorrupt) {
            corrupt = true;
            break;
          }
          ASSERT_GE(view.payload.data(), data_begin);
          ASSERT_LE(view.payload.data() + view.payload.size(), data_end);
          copy.assign(view.payload.begin(), view.payload.end());  // reads every byte
          consumer->pop();
          ++records;
        }
        consumer->release();
      }
      ASSERT_TRUE(corrupt) << "the final out-of-range tail was never reported";
      ASSERT_NE(consumer->error(), nullptr);
      const std::string message = consumer->error()->to_string();
      EXPECT_EQ(message.rfind("ring: ", 0), 0u) << message;
      EXPECT_GT(message.size(), 20u) << message;
      RecordView view;
      EXPECT_EQ(consumer->peek(view), PopStatus::kCorrupt) << "corruption must be sticky";
      EXPECT_EQ(child->wait(30s), 0);
      if (round == 0) std::printf("[ %s ] %llu records, then: %s\n", label.c_str(),
                                  static_cast<unsigned long long>(records), message.c_str());
    }
  }
}

TEST(HostileRingPeer, ProducerNeverWritesOutsideTheDataAreaWhateverTheConsumerPublishes) {
  const int rounds = static_cast<int>(test::scaled(6, 2));
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Shared shared = make_shared_ring();
    auto producer = RingProducer::attach(shared.ring, shared.eventfd.get());
    ASSERT_TRUE(producer) << producer.error().to_string();
    auto share = shared.region.share();
    ASSERT_TRUE(share);
    auto child = test::spawn_child("hostile_consumer", {"0", std::to_string(round)},
                                   {share->get(), shared.eventfd.get()});
    ASSERT_TRUE(child) << child.error().to_string();

    std::mt19937_64 rng(round);
    std::vector<std::byte> payload(producer->max_payload());
    std::uint64_t pushed = 0;
    std::uint64_t refused = 0;
    const auto deadline = std::chrono::steady_clock::now() + 300ms;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::size_t size = rng() % (payload.size() + 1);
      if (producer->try_push(1, std::span(payload).first(size))) {
        ++pushed;
      } else {
        ++refused;
      }
    }
    EXPECT_EQ(child->wait(30s), 0);
    (void)eventfd_drain(shared.eventfd.get());

    const Layout layout = layout_of(shared.region);
    const auto canary = shared.region.payload().first(layout.ring_offset);
    EXPECT_TRUE(std::all_of(canary.begin(), canary.end(), [](std::byte b) { return b == kCanary; }))
        << "bytes before the ring were overwritten";
    EXPECT_GT(pushed + refused, 0u);
    std::printf("[ round %d ] %llu pushed, %llu refused\n", round, static_cast<unsigned long long>(pushed),
                static_cast<unsigned long long>(refused));
  }
}

}  // namespace
}  // namespace floe::ipc
