// Bounded random fuzzing of the ring consumer: the region is written by an untrusted peer, so any
// bytes at all in the header indices and the data area must yield records inside the data area or
// a kCorrupt error — never an out-of-bounds read (run under AddressSanitizer in the asan pass).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "floe/ipc/ring.hpp"
#include "support/environment.hpp"

namespace floe::ipc {
namespace {

constexpr std::size_t kCapacity = 1024;

struct FuzzRing {
  // Exactly the ring's footprint (a multiple of 64), so ASan flags any read past the data area.
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> storage{
      static_cast<std::byte*>(std::aligned_alloc(kCacheLine, ring_footprint(kCapacity)))};
  std::span<std::byte> memory{storage.get(), ring_footprint(kCapacity)};
};

// Mutations a hostile producer can make, applied after a few honest pushes.
void mutate(std::mt19937_64& rng, RingHeader& header, std::byte* data) {
  switch (rng() % 6) {
    case 0:  // arbitrary tail
      header.tail.store(rng(), std::memory_order_relaxed);
      break;
    case 1:  // tail a little ahead, possibly misaligned
      header.tail.store(header.tail.load() + rng() % (2 * kCapacity), std::memory_order_relaxed);
      break;
    case 2: {  // random record header somewhere in the data area
      const std::size_t at = (rng() % (kCapacity / 8)) * 8;
      const std::uint64_t v = rng();
      std::memcpy(data + at, &v, sizeof v);
      break;
    }
    case 3: {  // a padding record with a random length at a random place
      const std::size_t at = (rng() % (kCapacity / 8)) * 8;
      const RecordHeader h{static_cast<std::uint32_t>(rng() % (2 * kCapacity)), kPadRecord, 0};
      std::memcpy(data + at, &h, sizeof h);
      break;
    }
    case 4:  // random bytes over the whole data area
      for (std::size_t i = 0; i < kCapacity; i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(data + i, &v, sizeof v);
      }
      break;
    default: {  // a huge length in an otherwise valid record
      const RecordHeader h{0xFFFFFFF0U, 1, 0};
      std::memcpy(data + (header.head.load() % kCapacity), &h, sizeof h);
      break;
    }
  }
}

TEST(RingFuzz, HostileBytesNeverLeadOutsideTheDataArea) {
  std::mt19937_64 rng(0xF10E);
  const std::uint64_t rounds = test::scaled(20'000, 500);
  std::uint64_t corrupt = 0, records = 0;
  for (std::uint64_t round = 0; round < rounds; ++round) {
    FuzzRing ring;
    ASSERT_TRUE(ring_init(ring.memory, {.capacity = kCapacity, .notify = NotifyMode::kSpin}));
    auto producer = RingProducer::attach(ring.memory);
    auto consumer = RingConsumer::attach(ring.memory);
    ASSERT_TRUE(producer && consumer);
    std::byte payload[200]{};
    const int honest = static_cast<int>(rng() % 12);
    for (int i = 0; i < honest; ++i) (void)producer->try_push(1, {payload, rng() % sizeof payload});
    // Consume some, so head and the wrap point move around.
    RecordView view;
    for (int i = static_cast<int>(rng() % 4); i > 0 && consumer->peek(view) == PopStatus::kRecord; --i) consumer->pop();
    consumer->release();

    auto* data = ring.memory.data() + sizeof(RingHeader);
    for (int m = static_cast<int>(rng() % 3) + 1; m > 0; --m) mutate(rng, producer->header(), data);

    const std::byte* lo = data;
    const std::byte* hi = data + kCapacity;
    for (int step = 0; step < 64; ++step) {
      const PopStatus s = consumer->peek(view);
      if (s == PopStatus::kEmpty) break;
      if (s == PopStatus::kCorrupt) {
        ++corrupt;
        ASSERT_NE(consumer->error(), nullptr);
        EXPECT_FALSE(consumer->error()->message.empty());
        break;
      }
      ++records;
      ASSERT_GE(view.payload.data(), lo);
      ASSERT_LE(view.payload.data() + view.payload.size(), hi);
      // Touch every byte: under ASan an out-of-bounds span would be reported here.
      unsigned sum = 0;
      for (std::byte b : view.payload) sum += static_cast<unsigned>(b);
      (void)sum;
      consumer->pop();
    }
  }
  // The fuzzer must actually exercise both outcomes, or it tests nothing.
  EXPECT_GT(corrupt, rounds / 10);
  EXPECT_GT(records, 0U);
}

}  // namespace
}  // namespace floe::ipc
