// The doorbell's contract: which slots take() reports, when ring() writes the eventfd, what attach
// refuses, and that a ring handed a doorbell rings it instead of its own flag.
#include "floe/ipc/doorbell.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <new>
#include <vector>

#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"

namespace floe::ipc {
namespace {

/// Cache-line aligned heap memory.
class Memory {
 public:
  explicit Memory(std::size_t size)
      : size_(size), bytes_(static_cast<std::byte*>(::operator new(size, std::align_val_t{kCacheLine}))) {
    std::memset(bytes_, 0, size);
  }
  ~Memory() { ::operator delete(bytes_, std::align_val_t{kCacheLine}); }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  [[nodiscard]] std::span<std::byte> span() const { return {bytes_, size_}; }
  [[nodiscard]] DoorbellHeader& header() const { return *reinterpret_cast<DoorbellHeader*>(bytes_); }

 private:
  std::size_t size_;
  std::byte* bytes_;
};

Doorbell make(Memory& m, std::uint32_t slots) {
  EXPECT_TRUE(doorbell_init(m.span(), slots));
  auto d = Doorbell::attach(m.span());
  EXPECT_TRUE(d) << (d ? "" : d.error().to_string());
  return d ? std::move(*d) : Doorbell();
}

std::vector<std::uint32_t> take_all(Doorbell& d) {
  std::vector<std::uint32_t> out;
  d.take([&](std::uint32_t slot) { out.push_back(slot); });
  return out;
}

Fd eventfd() {
  auto fd = make_eventfd(/*nonblocking=*/true);
  EXPECT_TRUE(fd);
  return fd ? std::move(*fd) : Fd();
}

std::uint64_t signals_on(const Fd& fd) {
  auto n = eventfd_drain(fd.get());
  EXPECT_TRUE(n);
  return n ? *n : 0;
}

TEST(Doorbell, SlotCountsRoundUpToWholeWordsWithinTheLimit) {
  Memory m(doorbell_footprint(kDoorbellMaxSlots));
  EXPECT_EQ(make(m, 1).slots(), 64U);
  EXPECT_EQ(make(m, 65).slots(), 128U);
  EXPECT_EQ(make(m, kDoorbellMaxSlots).slots(), kDoorbellMaxSlots);
  EXPECT_FALSE(doorbell_init(m.span(), 0));
  EXPECT_FALSE(doorbell_init(m.span(), kDoorbellMaxSlots + 1));
  Memory small(doorbell_footprint(64));
  EXPECT_FALSE(doorbell_init(small.span(), 4096)) << "a span too small for the slots is refused";
}

TEST(Doorbell, TakeReportsEachRungSlotOnceInOrderAndClearsThem) {
  Memory m(doorbell_footprint(4096));
  Doorbell d = make(m, 4096);
  Fd fd = eventfd();
  for (std::uint32_t slot : {4095U, 3U, 64U, 3U, 0U, 4095U}) d.ring(slot, fd.get());
  EXPECT_EQ(take_all(d), (std::vector<std::uint32_t>{0, 3, 64, 4095}));
  EXPECT_TRUE(take_all(d).empty());
  EXPECT_FALSE(d.any_pending());
  EXPECT_EQ(m.header().takes.load(), 4U);
  EXPECT_EQ(signals_on(fd), 0U) << "an awake consumer costs the producers no signal";
}

TEST(Doorbell, OnlyASleepingConsumerIsSignalledAndOnlyOncePerSleep) {
  Memory m(doorbell_footprint(128));
  Doorbell d = make(m, 128);
  Fd fd = eventfd();
  ASSERT_TRUE(d.prepare_sleep());
  EXPECT_EQ(m.header().sleeping.load(), 1U);
  d.ring(7, fd.get());
  d.ring(100, fd.get());
  d.ring(7, fd.get());
  EXPECT_EQ(signals_on(fd), 1U);
  EXPECT_EQ(m.header().signals.load(), 1U);
  EXPECT_EQ(m.header().sleeping.load(), 0U) << "the signalling producer lowered the flag";
  d.finish_sleep();
  EXPECT_EQ(m.header().wakeups.load(), 1U);
  // Pending bits keep it awake: it must take them before it may sleep.
  EXPECT_FALSE(d.prepare_sleep());
  EXPECT_EQ(m.header().sleeping.load(), 0U);
  EXPECT_EQ(take_all(d), (std::vector<std::uint32_t>{7, 100}));
  ASSERT_TRUE(d.prepare_sleep());
  d.ring(5, fd.get());
  EXPECT_EQ(signals_on(fd), 1U) << "a second sleep earns a second signal";
}

TEST(Doorbell, SlotsBeyondTheCountAreIgnoredWhoeverSetsThem) {
  Memory m(doorbell_footprint(4096 * 2));
  Doorbell d = make(m, 128);
  Fd fd = eventfd();
  d.ring(128, fd.get());
  d.ring(999999, fd.get());
  EXPECT_FALSE(d.any_pending());
  // A peer sets summary bits for words that do not exist, and every pending bit it can reach.
  auto* summary = reinterpret_cast<std::atomic<std::uint64_t>*>(m.span().data() + m.header().summary_offset);
  auto* pending = reinterpret_cast<std::atomic<std::uint64_t>*>(m.span().data() + m.header().pending_offset);
  summary[0].store(~std::uint64_t{0});
  pending[0].store(std::uint64_t{1} << 9);
  EXPECT_EQ(take_all(d), (std::vector<std::uint32_t>{9}));
  // Rewriting the slot count after attach changes nothing for this handle.
  m.header().slots = 4096 * 2;
  d.ring(4000, fd.get());
  EXPECT_TRUE(take_all(d).empty());
}

TEST(Doorbell, AttachRefusesHeadersThatDoNotAddUp) {
  Memory m(doorbell_footprint(4096));
  auto fresh = [&] { ASSERT_TRUE(doorbell_init(m.span(), 4096)); };
  auto refused = [&](const char* what) {
    auto d = Doorbell::attach(m.span());
    EXPECT_FALSE(d) << what;
  };
  fresh();
  m.header().magic = 0;
  refused("bad magic");
  fresh();
  m.header().layout_version = kDoorbellLayoutVersion + 1;
  refused("a newer layout");
  fresh();
  m.header().slots = 100;
  refused("slots not a multiple of 64");
  fresh();
  m.header().slots = 8192;
  refused("more slots than the span holds");
  fresh();
  m.header().pending_offset += 64;
  refused("pending words moved");
  fresh();
  EXPECT_FALSE(Doorbell::attach(m.span().first(100))) << "shorter than a header";
  EXPECT_FALSE(Doorbell::attach(m.span().subspan(8))) << "misaligned";
  EXPECT_TRUE(Doorbell::attach(m.span()));
}

TEST(Doorbell, ARingGivenADoorbellRingsItInsteadOfItsOwnFlag) {
  Memory ring(ring_footprint(1024));
  ASSERT_TRUE(ring_init(ring.span(), {.capacity = 1024, .notify = NotifyMode::kEventfd}));
  Memory bell_mem(doorbell_footprint(64));
  Doorbell bell = make(bell_mem, 64);
  Fd ring_fd = eventfd();
  Fd bell_fd = eventfd();
  auto producer = RingProducer::attach(ring.span(), ring_fd.get());
  auto consumer = RingConsumer::attach(ring.span(), ring_fd.get());
  ASSERT_TRUE(producer && consumer);
  producer->use_doorbell(&bell, 42, bell_fd.get());
  // The ring's own flag is up (as a per-ring consumer would leave it) and must be ignored.
  ASSERT_TRUE(consumer->prepare_sleep());
  ASSERT_TRUE(bell.prepare_sleep());
  const std::byte payload[8]{};
  ASSERT_TRUE(producer->try_push(1, payload));
  ASSERT_TRUE(producer->try_push(1, payload));
  EXPECT_EQ(signals_on(ring_fd), 0U);
  EXPECT_EQ(signals_on(bell_fd), 1U);
  bell.finish_sleep();
  EXPECT_EQ(take_all(bell), (std::vector<std::uint32_t>{42}));
  auto n = consumer->drain([](const RecordView&) {});
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 2U);
}

TEST(Doorbell, ARegionHoldsSeveralAndAttachChecksTheAnnouncedShape) {
  const std::uint32_t count = 3;
  const std::uint32_t slots = 4096;
  auto region = Region::create({.name = "bells-test", .size = doorbell_region_size(count, slots),
                                .kind = RegionKind::kDoorbells});
  ASSERT_TRUE(region) << region.error().to_string();
  const std::span<std::byte> bytes{region->data(), region->size()};
  ASSERT_TRUE(doorbell_region_init(bytes, count, slots));
  auto bells = doorbell_region_attach(bytes, count, slots);
  ASSERT_TRUE(bells) << bells.error().to_string();
  ASSERT_EQ(bells->size(), count);
  Fd fd = eventfd();
  (*bells)[2].ring(17, fd.get());
  EXPECT_FALSE((*bells)[0].any_pending());
  EXPECT_FALSE((*bells)[1].any_pending());
  EXPECT_EQ(take_all((*bells)[2]), (std::vector<std::uint32_t>{17}));
  EXPECT_FALSE(doorbell_region_attach(bytes, count, slots * 2)) << "more slots than announced";
  EXPECT_FALSE(doorbell_region_attach(bytes, count + 10, slots)) << "more doorbells than the region holds";
  EXPECT_FALSE(doorbell_region_attach(bytes, count, 64)) << "a different slot count than initialised";
}

}  // namespace
}  // namespace floe::ipc
