#include "floe/ipc/ring.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

/// Exactly ring_footprint(capacity) bytes on the heap (plus `extra`), so AddressSanitizer flags any
/// read past the data area. Pre-filled with garbage: nothing may depend on zeroed memory.
class RingMemory {
 public:
  explicit RingMemory(std::size_t capacity, std::size_t extra = 0)
      : size_(ring_footprint(capacity) + extra),
        bytes_(static_cast<std::byte*>(::operator new(size_, std::align_val_t{kCacheLine}))) {
    std::memset(bytes_, 0xCD, size_);
  }
  ~RingMemory() { ::operator delete(bytes_, std::align_val_t{kCacheLine}); }
  RingMemory(const RingMemory&) = delete;
  RingMemory& operator=(const RingMemory&) = delete;

  [[nodiscard]] std::span<std::byte> span() const { return {bytes_, size_}; }
  [[nodiscard]] RingHeader& header() const { return *reinterpret_cast<RingHeader*>(bytes_); }
  [[nodiscard]] std::byte* data() const { return bytes_ + sizeof(RingHeader); }

 private:
  std::size_t size_;
  std::byte* bytes_;
};

/// The payload byte `i` of record number `seq`: every record differs from its neighbours.
std::byte pattern(std::uint64_t seq, std::size_t i) {
  return static_cast<std::byte>((seq * 131 + i * 7 + (seq >> 8)) & 0xFF);
}

std::vector<std::byte> make_payload(std::uint64_t seq, std::size_t size) {
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i < size; ++i) v[i] = pattern(seq, i);
  return v;
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

std::string string_of(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

/// A ring in `memory` with both handles attached.
struct Ring {
  RingProducer producer;
  RingConsumer consumer;
};

Ring make_ring(const RingMemory& memory, std::size_t capacity, NotifyMode mode = NotifyMode::kSpin,
               int notify_fd = -1) {
  const Status init = ring_init(memory.span(), {.capacity = capacity, .notify = mode});
  EXPECT_TRUE(init.has_value()) << init.error().to_string();
  auto producer = RingProducer::attach(memory.span(), notify_fd);
  auto consumer = RingConsumer::attach(memory.span(), notify_fd);
  EXPECT_TRUE(producer.has_value()) << producer.error().to_string();
  EXPECT_TRUE(consumer.has_value()) << consumer.error().to_string();
  return {std::move(*producer), std::move(*consumer)};
}

/// Pushes and pops records of `bytes` ring bytes each until both indices sit at `offset`.
void advance_indices(Ring& ring, std::uint64_t offset) {
  ASSERT_EQ(offset % kRecordAlign, 0u);
  const std::vector<std::byte> nothing;
  for (std::uint64_t at = 0; at < offset; at += kRecordAlign) {
    ASSERT_TRUE(ring.producer.try_push(1, nothing));
    RecordView view;
    ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
    ring.consumer.pop();
  }
  ring.consumer.release();
}

/// Expects a sticky kCorrupt whose message contains `needle`.
void expect_corrupt(RingConsumer& consumer, const std::string& needle) {
  RecordView view;
  ASSERT_EQ(consumer.peek(view), PopStatus::kCorrupt);
  ASSERT_NE(consumer.error(), nullptr);
  EXPECT_EQ(consumer.error()->operation, "ring");
  EXPECT_NE(consumer.error()->message.find(needle), std::string::npos)
      << "message: " << consumer.error()->to_string() << "\nexpected to contain: " << needle;
  EXPECT_EQ(consumer.peek(view), PopStatus::kCorrupt) << "corruption must be sticky";
}

// ---------------------------------------------------------------------------------------------
// Basic behaviour

TEST(Ring, PushedRecordComesOutWithItsTypeFlagsAndPayload) {
  RingMemory memory(1024);
  Ring ring = make_ring(memory, 1024);
  ASSERT_TRUE(ring.producer.try_push(42, bytes_of("hello ring"), 7));
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
  EXPECT_EQ(view.type, 42);
  EXPECT_EQ(view.flags, 7);
  EXPECT_EQ(string_of(view.payload), "hello ring");
  ring.consumer.pop();
  EXPECT_EQ(ring.consumer.peek(view), PopStatus::kEmpty);
}

TEST(Ring, RecordsComeOutInTheOrderTheyWerePushed) {
  RingMemory memory(4096);
  Ring ring = make_ring(memory, 4096);
  for (std::uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(ring.producer.try_push(1, make_payload(i, i * 3)));
  std::uint64_t expected = 0;
  const auto n = ring.consumer.drain([&](const RecordView& v) {
    EXPECT_EQ(v.payload.size(), expected * 3);
    EXPECT_TRUE(std::ranges::equal(v.payload, make_payload(expected, expected * 3))) << "record " << expected;
    ++expected;
  });
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 20u);
}

TEST(Ring, EmptyRingHasNoDataAndPeeksEmpty) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  EXPECT_FALSE(ring.consumer.has_data());
  RecordView view;
  EXPECT_EQ(ring.consumer.peek(view), PopStatus::kEmpty);
  EXPECT_EQ(ring.consumer.error(), nullptr);
}

TEST(Ring, ZeroLengthRecordsAreRecords) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(9, {}));
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
  EXPECT_EQ(view.type, 9);
  EXPECT_TRUE(view.payload.empty());
  EXPECT_EQ(ring.producer.header().tail.load(), 8u);
}

TEST(Ring, PeekDoesNotConsumeAndPopWithoutPeekDoesNothing) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("a")));
  ASSERT_TRUE(ring.producer.try_push(2, bytes_of("b")));
  RecordView first;
  RecordView again;
  ASSERT_EQ(ring.consumer.peek(first), PopStatus::kRecord);
  ASSERT_EQ(ring.consumer.peek(again), PopStatus::kRecord);
  EXPECT_EQ(first.type, 1);
  EXPECT_EQ(again.type, 1);
  ring.consumer.pop();
  ring.consumer.pop();  // no peek since the last pop: must not skip "b"
  ASSERT_EQ(ring.consumer.peek(again), PopStatus::kRecord);
  EXPECT_EQ(again.type, 2);
}

TEST(Ring, PushFailsWhenFullAndSetsTheOverflowFlag) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  const auto payload = make_payload(0, 24);  // 32 ring bytes per record
  int pushed = 0;
  while (ring.producer.try_push(1, payload)) ++pushed;
  EXPECT_EQ(pushed, 256 / 32);
  EXPECT_EQ(ring.producer.header().overflow.load(), 1u);
  EXPECT_EQ(ring.producer.header().records_pushed.load(), 8u);

  // Space comes back only once the consumer releases.
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
  ring.consumer.pop();
  EXPECT_FALSE(ring.producer.try_push(1, payload)) << "popped but not released yet";
  ring.consumer.release();
  EXPECT_TRUE(ring.producer.try_push(1, payload));
}

TEST(Ring, PaddingRecordFillsTheEndAndTheRecordStartsAtOffsetZero) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 200);
  const auto payload = make_payload(5, 120);  // 128 ring bytes, only 56 left before the end
  ASSERT_TRUE(ring.producer.try_push(3, payload));
  EXPECT_EQ(ring.producer.header().tail.load(), 200u + 56u + 128u);

  RecordHeader pad;
  std::memcpy(&pad, memory.data() + 200, sizeof pad);
  EXPECT_EQ(pad.type, kPadRecord);
  EXPECT_EQ(pad.length, 56u - 8u);
  RecordHeader rec;
  std::memcpy(&rec, memory.data(), sizeof rec);
  EXPECT_EQ(rec.type, 3);
  EXPECT_EQ(rec.length, 120u);

  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
  EXPECT_EQ(view.type, 3) << "the padding record must be invisible";
  EXPECT_EQ(view.payload.data(), memory.data() + sizeof(RecordHeader));
  EXPECT_TRUE(std::ranges::equal(view.payload, payload));
  ring.consumer.pop();
  ring.consumer.release();
  EXPECT_EQ(ring.consumer.header().head.load(), 384u);
}

TEST(Ring, WrapAroundKeepsRandomSizedPayloadsByteExact) {
  for (const std::size_t capacity : {256u, 1024u, 4096u, 65536u}) {
    SCOPED_TRACE("capacity " + std::to_string(capacity));
    RingMemory memory(capacity);
    Ring ring = make_ring(memory, capacity);
    std::mt19937_64 rng(capacity);
    const std::size_t max = ring.producer.max_payload();
    std::uniform_int_distribution<std::size_t> size_of(0, max);
    std::uniform_int_distribution<int> burst(1, 12);
    std::deque<std::pair<std::uint64_t, std::size_t>> in_flight;
    std::uint64_t next_seq = 0;
    std::uint64_t popped = 0;
    while (popped < 5000) {
      for (int b = burst(rng); b > 0; --b) {
        const std::size_t size = size_of(rng);
        if (!ring.producer.try_push(static_cast<std::uint16_t>(next_seq & 0x7FFF), make_payload(next_seq, size),
                                    static_cast<std::uint16_t>(size))) {
          break;
        }
        in_flight.emplace_back(next_seq++, size);
      }
      for (int b = burst(rng); b > 0; --b) {
        RecordView view;
        const PopStatus s = ring.consumer.peek(view);
        ASSERT_NE(s, PopStatus::kCorrupt) << ring.consumer.error()->to_string();
        if (s == PopStatus::kEmpty) {
          ASSERT_TRUE(in_flight.empty());
          break;
        }
        ASSERT_FALSE(in_flight.empty());
        const auto [seq, size] = in_flight.front();
        in_flight.pop_front();
        ASSERT_EQ(view.type, seq & 0x7FFF);
        ASSERT_EQ(view.flags, size);
        ASSERT_EQ(view.payload.size(), size);
        ASSERT_TRUE(std::ranges::equal(view.payload, make_payload(seq, size))) << "record " << seq;
        ring.consumer.pop();
        ++popped;
      }
      ring.consumer.release();
    }
    // Many laps, so the padding path ran many times.
    EXPECT_GT(ring.producer.header().tail.load(), 20 * capacity);
    EXPECT_LE(ring.producer.header().high_water.load(), capacity);
  }
}

// ---------------------------------------------------------------------------------------------
// Batches

TEST(Ring, BatchIsInvisibleUntilPublish) {
  RingMemory memory(1024);
  Ring ring = make_ring(memory, 1024);
  for (std::uint16_t i = 0; i < 3; ++i) {
    std::byte* p = ring.producer.try_reserve(i, 16);
    ASSERT_NE(p, nullptr);
    std::memset(p, 'a' + i, 16);
  }
  EXPECT_EQ(ring.producer.header().tail.load(), 0u);
  EXPECT_FALSE(ring.consumer.has_data());
  RecordView view;
  EXPECT_EQ(ring.consumer.peek(view), PopStatus::kEmpty);

  ring.producer.publish();
  EXPECT_EQ(ring.producer.header().tail.load(), 3u * 24u);
  std::uint16_t expected = 0;
  const auto n = ring.consumer.drain([&](const RecordView& v) {
    EXPECT_EQ(v.type, expected);
    EXPECT_EQ(string_of(v.payload), std::string(16, static_cast<char>('a' + expected)));
    ++expected;
  });
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 3u);
}

TEST(Ring, ReserveFailsWhenTheBatchFillsTheRing) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  int reserved = 0;
  while (ring.producer.try_reserve(1, 56) != nullptr) ++reserved;  // 64 ring bytes each
  EXPECT_EQ(reserved, 4);
  EXPECT_EQ(ring.producer.header().overflow.load(), 1u);
  ring.producer.publish();
  auto n = ring.consumer.drain([](const RecordView&) {});
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 4u);
  EXPECT_NE(ring.producer.try_reserve(1, 56), nullptr);
}

TEST(Ring, PublishWithNothingReservedChangesNothing) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ring.producer.publish();
  EXPECT_EQ(ring.producer.header().tail.load(), 0u);
  EXPECT_FALSE(ring.consumer.has_data());
}

// ---------------------------------------------------------------------------------------------
// Limits

TEST(Ring, MaxPayloadIsHalfTheCapacityMinusTheRecordHeader) {
  RingMemory memory(1024);
  Ring ring = make_ring(memory, 1024);
  EXPECT_EQ(ring.producer.max_payload(), 1024u / 2 - 8);
}

TEST(Ring, MaxPayloadFitsAnEmptyRingWhereverTheIndicesStand) {
  constexpr std::size_t kCapacity = 256;
  RingMemory memory(kCapacity);
  Ring ring = make_ring(memory, kCapacity);
  const auto big = make_payload(77, ring.producer.max_payload());
  for (std::uint64_t offset = 0; offset < 2 * kCapacity; offset += kRecordAlign) {
    ASSERT_TRUE(ring.producer.try_push(2, big)) << "at ring offset " << offset;
    RecordView view;
    ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
    ASSERT_TRUE(std::ranges::equal(view.payload, big));
    ring.consumer.pop();
    ring.consumer.release();
    advance_indices(ring, kRecordAlign);  // shift the next attempt by one slot
  }
  EXPECT_EQ(ring.producer.header().overflow.load(), 0u);
}

TEST(Ring, PayloadAboveMaxIsRefusedWithoutRaisingOverflow) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  const auto too_big = make_payload(1, ring.producer.max_payload() + 1);
  EXPECT_FALSE(ring.producer.try_push(1, too_big));
  EXPECT_EQ(ring.producer.try_reserve(1, static_cast<std::uint32_t>(too_big.size())), nullptr);
  EXPECT_FALSE(ring.producer.push_wait(1, too_big, 1ms));
  EXPECT_EQ(ring.producer.header().overflow.load(), 0u);
  EXPECT_EQ(ring.producer.header().tail.load(), 0u);
}

TEST(Ring, PushWaitSucceedsOnceTheConsumerMakesRoom) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  const auto payload = make_payload(3, 120);
  ASSERT_TRUE(ring.producer.try_push(1, payload));
  ASSERT_TRUE(ring.producer.try_push(1, payload));
  std::thread consumer([&] {
    std::this_thread::sleep_for(20ms);
    (void)ring.consumer.drain([](const RecordView&) {}, 1);
  });
  EXPECT_TRUE(ring.producer.push_wait(1, payload, 10s));
  consumer.join();
  EXPECT_EQ(ring.producer.header().overflow.load(), 0u) << "a record that waited was not dropped";
}

TEST(Ring, PushWaitGivesUpAfterTheTimeoutAndRaisesOverflow) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  const auto payload = make_payload(3, 120);
  ASSERT_TRUE(ring.producer.try_push(1, payload));
  ASSERT_TRUE(ring.producer.try_push(1, payload));
  EXPECT_FALSE(ring.producer.push_wait(1, payload, 5ms));
  EXPECT_EQ(ring.producer.header().overflow.load(), 1u);
}

// ---------------------------------------------------------------------------------------------
// ring_init and attach validation

TEST(RingInit, RefusesCapacitiesThatAreNotPowersOfTwoOrTooSmall) {
  RingMemory memory(4096);
  for (const std::size_t bad : {0u, 128u, 255u, 300u, 1000u}) {
    const Status s = ring_init(memory.span(), {.capacity = bad});
    ASSERT_FALSE(s.has_value()) << bad;
    EXPECT_NE(s.error().message.find("power of two"), std::string::npos) << s.error().to_string();
  }
}

TEST(RingInit, RefusesASpanSmallerThanTheFootprint) {
  RingMemory memory(1024);
  const Status s = ring_init(memory.span().first(ring_footprint(1024) - 8), {.capacity = 1024});
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find("footprint"), std::string::npos) << s.error().to_string();
}

TEST(RingInit, RefusesMisalignedMemory) {
  RingMemory memory(1024, 64);
  const Status s = ring_init(memory.span().subspan(8), {.capacity = 1024});
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find("aligned"), std::string::npos) << s.error().to_string();
}

TEST(RingInit, RefusesAnUnknownNotifyMode) {
  RingMemory memory(1024);
  const Status s = ring_init(memory.span(), {.capacity = 1024, .notify = static_cast<NotifyMode>(9)});
  EXPECT_FALSE(s.has_value());
}

TEST(RingInit, WritesTheHeaderTheDesignDescribes) {
  RingMemory memory(1024);
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 1024, .notify = NotifyMode::kPoll, .poll_interval = 250us}));
  const RingHeader& h = memory.header();
  EXPECT_EQ(h.magic, kRingMagic);
  EXPECT_EQ(h.layout_version, kRingLayoutVersion);
  EXPECT_EQ(h.capacity, 1024u);
  EXPECT_EQ(h.notify_mode, static_cast<std::uint32_t>(NotifyMode::kPoll));
  EXPECT_EQ(h.poll_interval_us, 250u);
  EXPECT_EQ(h.data_offset, sizeof(RingHeader));
  EXPECT_EQ(h.head.load(), 0u);
  EXPECT_EQ(h.tail.load(), 0u);
  EXPECT_EQ(h.consumer_sleeping.load(), 0u);
}

/// Initialises a spin ring, lets `corrupt` damage the header, and expects both attaches to fail
/// with a message containing `needle`.
void expect_attach_refused(void (*corrupt)(RingHeader&), const std::string& needle,
                           std::size_t span_cut = 0) {
  RingMemory memory(1024);
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 1024, .notify = NotifyMode::kSpin}));
  corrupt(memory.header());
  const auto span = memory.span().first(memory.span().size() - span_cut);
  const auto p = RingProducer::attach(span);
  const auto c = RingConsumer::attach(span);
  ASSERT_FALSE(p.has_value());
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().operation, "ring.attach");
  EXPECT_NE(c.error().message.find(needle), std::string::npos) << c.error().to_string();
  EXPECT_NE(p.error().message.find(needle), std::string::npos) << p.error().to_string();
}

TEST(RingAttach, AcceptsAFreshRing) {
  RingMemory memory(1024);
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 1024, .notify = NotifyMode::kSpin}));
  EXPECT_TRUE(RingProducer::attach(memory.span()).has_value());
  EXPECT_TRUE(RingConsumer::attach(memory.span()).has_value());
}

TEST(RingAttach, RefusesBadMagic) {
  expect_attach_refused([](RingHeader& h) { h.magic = 0xDEADBEEF; }, "bad magic 0xdeadbeef");
}

TEST(RingAttach, RefusesAnotherLayoutVersion) {
  expect_attach_refused([](RingHeader& h) { h.layout_version = kRingLayoutVersion + 1; },
                        "layout version " + std::to_string(kRingLayoutVersion + 1));
}

TEST(RingAttach, RefusesACapacityThatIsNotAPowerOfTwo) {
  expect_attach_refused([](RingHeader& h) { h.capacity = 1000; }, "capacity 1000");
}

TEST(RingAttach, RefusesACapacityBelowTheMinimum) {
  expect_attach_refused([](RingHeader& h) { h.capacity = 128; }, "capacity 128");
}

TEST(RingAttach, RefusesADataAreaBeyondTheSpan) {
  expect_attach_refused([](RingHeader& h) { h.capacity = 2048; }, "does not fit");
  expect_attach_refused([](RingHeader&) {}, "does not fit", 8);
  expect_attach_refused([](RingHeader& h) { h.data_offset = 1u << 30; }, "does not fit");
  expect_attach_refused([](RingHeader& h) { h.data_offset = 8; }, "does not fit");
}

TEST(RingAttach, RefusesAnUnknownNotifyMode) {
  expect_attach_refused([](RingHeader& h) { h.notify_mode = 77; }, "notify mode 77");
}

TEST(RingAttach, RefusesAMisalignedHead) {
  expect_attach_refused([](RingHeader& h) { h.head.store(3); h.tail.store(64); }, "not 8-byte aligned");
}

TEST(RingAttach, RefusesAHeadPastTheTail) {
  expect_attach_refused([](RingHeader& h) { h.head.store(64); h.tail.store(32); }, "head 64 is past tail 32");
}

TEST(RingAttach, RefusesATailFurtherPastTheHeadThanTheCapacity) {
  expect_attach_refused([](RingHeader& h) { h.tail.store(4096); }, "more than the capacity 1024");
}

TEST(RingAttach, RefusesEventfdModeWithoutAnEventfd) {
  RingMemory memory(1024);
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 1024, .notify = NotifyMode::kEventfd}));
  EXPECT_FALSE(RingProducer::attach(memory.span(), -1).has_value());
  EXPECT_FALSE(RingConsumer::attach(memory.span(), -1).has_value());
}

TEST(RingAttach, RefusesASpanSmallerThanAHeader) {
  RingMemory memory(256);
  EXPECT_FALSE(RingConsumer::attach(memory.span().first(100)).has_value());
  EXPECT_FALSE(RingConsumer::attach({}).has_value());
}

TEST(RingAttach, ConsumerAttachingLateSeesRecordsAlreadyPublished) {
  RingMemory memory(1024);
  ASSERT_TRUE(ring_init(memory.span(), {.capacity = 1024, .notify = NotifyMode::kSpin}));
  auto producer = RingProducer::attach(memory.span());
  ASSERT_TRUE(producer.has_value());
  ASSERT_TRUE(producer->try_push(5, bytes_of("early")));
  auto consumer = RingConsumer::attach(memory.span());
  ASSERT_TRUE(consumer.has_value());
  RecordView view;
  ASSERT_EQ(consumer->peek(view), PopStatus::kRecord);
  EXPECT_EQ(string_of(view.payload), "early");
}

// ---------------------------------------------------------------------------------------------
// A hostile producer: every violation is a sticky kCorrupt with a message, never a wild read.
// Memory is allocated to the byte, so AddressSanitizer builds catch any read past the data area.

TEST(RingCorruption, TailFarPastHeadIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  memory.header().tail.store(1u << 20);
  expect_corrupt(ring.consumer, "tail 1048576 is 1048576 bytes past head 0, more than the capacity 256");
}

TEST(RingCorruption, MisalignedTailIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("x")));
  memory.header().tail.store(13);
  expect_corrupt(ring.consumer, "tail 13 is not 8-byte aligned");
}

TEST(RingCorruption, TailBehindHeadIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 64);
  memory.header().tail.store(32);  // head 64 > tail 32
  expect_corrupt(ring.consumer, "tail 32 is behind head 64");
}

TEST(RingCorruption, TailMovingBackwardsIsReportedAsBehindHead) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("x")));
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("y")));
  const auto n = ring.consumer.drain([](const RecordView&) {});  // head 32, tail 32 seen
  ASSERT_TRUE(n.has_value());
  ASSERT_EQ(*n, 2u);
  memory.header().tail.store(16);
  expect_corrupt(ring.consumer, "tail 16 is behind head 32");
}

TEST(RingCorruption, HugeRecordLengthIsReportedWithItsOffset) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 128);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(0, 56)));  // 64 ring bytes published at 128
  const RecordHeader bad{0xFFFFFFFFu, 1, 0};
  std::memcpy(memory.data() + 128, &bad, sizeof bad);
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kCorrupt);
  ASSERT_NE(ring.consumer.error(), nullptr);
  EXPECT_EQ(ring.consumer.error()->to_string(), "ring: record length 4294967295 exceeds published bytes 64 at offset 128");
}

TEST(RingCorruption, RecordLengthOneByteTooLongIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(0, 16)));  // 24 bytes
  const RecordHeader bad{17, 1, 0};                              // would need 32
  std::memcpy(memory.data(), &bad, sizeof bad);
  expect_corrupt(ring.consumer, "record length 17 exceeds published bytes 24 at offset 0");
}

TEST(RingCorruption, RecordRunningPastTheEndOfTheDataAreaIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 200);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(0, 40)));   // 48 bytes at 200
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(1, 120)));  // pad at 248, record at 0
  const RecordHeader bad{100, 1, 0};  // 112 bytes: within the 184 published, but only 56 to the end
  std::memcpy(memory.data() + 200, &bad, sizeof bad);
  expect_corrupt(ring.consumer, "record length 100 at offset 200 runs past the end of the data area");
}

TEST(RingCorruption, PadRecordWithTheWrongLengthIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 200);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(1, 120)));  // pad at 200 (length 48), record at 0
  const RecordHeader bad{12, kPadRecord, 0};
  std::memcpy(memory.data() + 200, &bad, sizeof bad);
  expect_corrupt(ring.consumer, "pad record length 12 at offset 200 does not reach the end of the data area "
                                "(expected 48)");
}

TEST(RingCorruption, PadRecordLongerThanWhatWasPublishedIsReported) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  advance_indices(ring, 200);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(1, 0)));  // 8 bytes at 200
  const RecordHeader pad{48, kPadRecord, 0};                   // consistent with the end, but 56 > 8
  std::memcpy(memory.data() + 200, &pad, sizeof pad);
  expect_corrupt(ring.consumer, "pad record at offset 200 spans 56 bytes but only 8 are published");
}

TEST(RingCorruption, IsStickyEvenAfterTheMemoryIsRepaired) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  ASSERT_TRUE(ring.producer.try_push(1, make_payload(0, 16)));
  RecordHeader good;
  std::memcpy(&good, memory.data(), sizeof good);
  const RecordHeader bad{1000, 1, 0};
  std::memcpy(memory.data(), &bad, sizeof bad);
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kCorrupt);
  std::memcpy(memory.data(), &good, sizeof good);
  EXPECT_EQ(ring.consumer.peek(view), PopStatus::kCorrupt);
  EXPECT_TRUE(ring.consumer.has_data()) << "a waiter must not sleep on a broken ring";
  EXPECT_TRUE(ring.consumer.wait(1ms));
  const auto drained = ring.consumer.drain([](const RecordView&) { ADD_FAILURE() << "no record may be handed out"; });
  ASSERT_FALSE(drained.has_value());
  EXPECT_NE(drained.error().message.find("record length 1000"), std::string::npos);
}

TEST(RingCorruption, RandomScribblesNeverYieldAViewOutsideTheDataArea) {
  constexpr std::size_t kCapacity = 512;
  std::mt19937_64 rng(12345);
  int corrupt_seen = 0;
  for (int round = 0; round < 2000; ++round) {
    RingMemory memory(kCapacity);
    Ring ring = make_ring(memory, kCapacity);
    // Some honest traffic first, so indices sit anywhere.
    const auto lap = std::uniform_int_distribution<int>(0, 60)(rng);
    for (int i = 0; i < lap; ++i) {
      (void)ring.producer.try_push(1, make_payload(i, std::uniform_int_distribution<std::size_t>(0, 100)(rng)));
      if (i % 2 == 0) (void)ring.consumer.drain([](const RecordView&) {});
    }
    // Scribble: random bytes over data, and sometimes over the tail.
    for (int k = std::uniform_int_distribution<int>(1, 16)(rng); k > 0; --k) {
      memory.data()[std::uniform_int_distribution<std::size_t>(0, kCapacity - 1)(rng)] =
          static_cast<std::byte>(rng());
    }
    if (rng() % 3 == 0) memory.header().tail.store(rng() % (4 * kCapacity) + ring.consumer.header().head.load());
    for (int i = 0; i < 200; ++i) {
      RecordView view;
      const PopStatus s = ring.consumer.peek(view);
      if (s == PopStatus::kCorrupt) {
        ++corrupt_seen;
        ASSERT_NE(ring.consumer.error(), nullptr);
        EXPECT_FALSE(ring.consumer.error()->message.empty());
        break;
      }
      if (s == PopStatus::kEmpty) break;
      ASSERT_GE(view.payload.data(), memory.data());
      ASSERT_LE(view.payload.data() + view.payload.size(), memory.data() + kCapacity);
      volatile std::byte sink{};
      for (const std::byte b : view.payload) sink = b;  // touch every byte (ASan checks)
      (void)sink;
      ring.consumer.pop();
      ring.consumer.release();
    }
  }
  EXPECT_GT(corrupt_seen, 100) << "the scribbles should trip the checks often";
}

// ---------------------------------------------------------------------------------------------
// A hostile consumer cannot make the producer write outside the data area.

TEST(RingProducerSafety, HeadOutsideTheProducersRangeIsIgnored) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  const auto payload = make_payload(0, 56);
  while (ring.producer.try_push(1, payload)) {
  }
  for (const std::uint64_t bad : {std::uint64_t{1} << 60, std::uint64_t{260}, std::uint64_t{12}}) {
    memory.header().head.store(bad);
    EXPECT_FALSE(ring.producer.try_push(1, payload)) << "head " << bad << " must not free space";
  }
  memory.header().head.store(64);  // an honest release of one record
  EXPECT_TRUE(ring.producer.try_push(1, payload));
}

// Records reserved but not yet published are the producer's own: a consumer cannot have read
// them, so a head that claims to have passed them frees nothing.
TEST(RingProducerSafety, AHeadPastWhatWasPublishedDoesNotFreeTheUnpublishedBatch) {
  RingMemory memory(256);
  Ring ring = make_ring(memory, 256);
  std::byte* first = ring.producer.try_reserve(1, 56);
  ASSERT_NE(first, nullptr);
  std::memset(first, 0xAB, 56);
  while (ring.producer.try_reserve(1, 56) != nullptr) {
  }
  memory.header().head.store(256);  // the end of the reserved batch; nothing was published
  EXPECT_EQ(ring.producer.try_reserve(1, 56), nullptr) << "it would overwrite the batch's first record";
  EXPECT_EQ(first[0], std::byte{0xAB});
  ring.producer.publish();
  memory.header().head.store(64);  // an honest release of one published record
  EXPECT_NE(ring.producer.try_reserve(1, 56), nullptr);
}

// ---------------------------------------------------------------------------------------------
// Waiting and wakeup suppression

class RingWait : public ::testing::TestWithParam<NotifyMode> {};

TEST_P(RingWait, WaitWithATimeoutReturnsFalseOnAnEmptyRing) {
  RingMemory memory(1024);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 1024, GetParam(), efd->get());
  EXPECT_FALSE(ring.consumer.wait(2ms));
  EXPECT_FALSE(ring.consumer.wait(0ns));
  EXPECT_EQ(memory.header().consumer_sleeping.load(), 0u) << "the flag must be down after giving up";
}

TEST_P(RingWait, WaitReturnsAtOnceWhenDataIsThere) {
  RingMemory memory(1024);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 1024, GetParam(), efd->get());
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("x")));
  EXPECT_TRUE(ring.consumer.wait());
  EXPECT_TRUE(ring.consumer.wait(0ns));
}

TEST_P(RingWait, ConsumerBlockedWithoutTimeoutWakesForAPushFromAnotherThread) {
  RingMemory memory(1024);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 1024, GetParam(), efd->get());
  std::thread producer([&] {
    std::this_thread::sleep_for(30ms);
    EXPECT_TRUE(ring.producer.try_push(1, bytes_of("wake")));
  });
  EXPECT_TRUE(ring.consumer.wait());
  RecordView view;
  ASSERT_EQ(ring.consumer.peek(view), PopStatus::kRecord);
  EXPECT_EQ(string_of(view.payload), "wake");
  producer.join();
  if (GetParam() == NotifyMode::kSpin || GetParam() == NotifyMode::kPoll) {
    EXPECT_EQ(memory.header().notifications_sent.load(), 0u) << "spin and poll are never signalled";
  }
}

INSTANTIATE_TEST_SUITE_P(AllModes, RingWait,
                         ::testing::Values(NotifyMode::kEventfd, NotifyMode::kFutex, NotifyMode::kSpin,
                                           NotifyMode::kPoll),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(RingWakeup, AwakeConsumerCostsTheProducerNoSignal) {
  RingMemory memory(4096);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 4096, NotifyMode::kEventfd, efd->get());
  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(ring.producer.try_push(1, make_payload(i, 40)));
    if (i % 10 == 9) {
      ASSERT_TRUE(ring.consumer.drain([](const RecordView&) {}).has_value());
    }
  }
  EXPECT_EQ(memory.header().notifications_sent.load(), 0u);
  auto pending = eventfd_drain(efd->get());
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(*pending, 0u);
}

TEST(RingWakeup, OneSleepCostsAtMostOneSignal) {
  RingMemory memory(4096);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 4096, NotifyMode::kEventfd, efd->get());
  ASSERT_TRUE(ring.consumer.prepare_sleep());
  EXPECT_EQ(memory.header().consumer_sleeping.load(), 1u);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(ring.producer.try_push(1, make_payload(i, 8)));
  EXPECT_EQ(memory.header().notifications_sent.load(), 1u);
  EXPECT_EQ(memory.header().consumer_sleeping.load(), 0u) << "the producer takes the flag down";
  auto pending = eventfd_drain(efd->get());
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(*pending, 1u);
  ring.consumer.finish_sleep();
  EXPECT_EQ(memory.header().consumer_wakeups.load(), 1u);
}

TEST(RingWakeup, AFailedPushWakesAConsumerThatWentToSleepMeanwhile) {
  // The producer found the ring full; meanwhile the consumer freed space, saw no overflow flag and
  // went to sleep (its flag up, as prepare_sleep leaves it). The lost record's flag must bring it
  // back to rescan, although nothing is published after it.
  RingMemory memory(256);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 256, NotifyMode::kEventfd, efd->get());
  const auto payload = make_payload(0, 24);
  while (ring.producer.try_push(1, payload)) {
  }
  (void)eventfd_drain(efd->get());
  memory.header().overflow.store(0);
  memory.header().consumer_sleeping.store(1);  // asleep, with the ring still full (from the producer's view)
  EXPECT_FALSE(ring.producer.try_push(1, payload));
  EXPECT_EQ(memory.header().overflow.load(), 1u);
  auto pending = eventfd_drain(efd->get());
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(*pending, 1u) << "the sleeping consumer was not woken to see the overflow flag";
  EXPECT_EQ(memory.header().consumer_sleeping.load(), 0u);
}

TEST(RingWakeup, PrepareSleepRefusesWhenDataIsAlreadyThere) {
  RingMemory memory(4096);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 4096, NotifyMode::kEventfd, efd->get());
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("x")));
  EXPECT_FALSE(ring.consumer.prepare_sleep());
  EXPECT_EQ(memory.header().consumer_sleeping.load(), 0u);
}

TEST(RingWakeup, PrepareSleepRefusesInModesThatAreNeverSignalled) {
  for (const NotifyMode mode : {NotifyMode::kSpin, NotifyMode::kPoll}) {
    RingMemory memory(1024);
    Ring ring = make_ring(memory, 1024, mode);
    EXPECT_FALSE(ring.consumer.prepare_sleep()) << to_string(mode);
    EXPECT_EQ(memory.header().consumer_sleeping.load(), 0u);
  }
}

TEST(RingWakeup, FutexModeBumpsTheWordWhenTheConsumerSleeps) {
  RingMemory memory(1024);
  Ring ring = make_ring(memory, 1024, NotifyMode::kFutex);
  const auto before = memory.header().futex_word.load();
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("a")));
  EXPECT_EQ(memory.header().futex_word.load(), before) << "awake consumer: no bump";
  (void)ring.consumer.drain([](const RecordView&) {});
  ASSERT_TRUE(ring.consumer.prepare_sleep());
  ASSERT_TRUE(ring.producer.try_push(1, bytes_of("b")));
  EXPECT_EQ(memory.header().futex_word.load(), before + 1);
  EXPECT_EQ(memory.header().notifications_sent.load(), 1u);
}

TEST(RingWakeup, WaitOnANonBlockingEventfdHonoursTheTimeout) {
  RingMemory memory(1024);
  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 1024, NotifyMode::kEventfd, efd->get());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(ring.consumer.wait(20ms));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 20ms) << "must block, not spin through EAGAIN";
  EXPECT_GE(memory.header().consumer_wakeups.load(), 1u);
}

TEST(RingWakeup, AStaleSignalOnlyCausesASpuriousWakeupThatIsAbsorbed) {
  RingMemory memory(1024);
  auto efd = make_eventfd();
  ASSERT_TRUE(efd.has_value());
  Ring ring = make_ring(memory, 1024, NotifyMode::kEventfd, efd->get());
  eventfd_signal(efd->get());  // a leftover signal with no data behind it
  EXPECT_FALSE(ring.consumer.wait(10ms));
  EXPECT_GE(memory.header().consumer_wakeups.load(), 2u) << "woke for the stale signal, then slept again";
}

TEST(RingCounters, PushedPoppedAndHighWaterTrackTheTraffic) {
  RingMemory memory(1024);
  Ring ring = make_ring(memory, 1024);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ring.producer.try_push(1, make_payload(i, 24)));  // 32 each
  EXPECT_EQ(memory.header().records_pushed.load(), 5u);
  EXPECT_EQ(memory.header().high_water.load(), 160u);
  const auto n = ring.consumer.drain([](const RecordView&) {}, 3);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(memory.header().records_popped.load(), 3u);
  EXPECT_EQ(memory.header().head.load(), 96u);
  EXPECT_EQ(memory.header().overflow.load(), 0u);
}

}  // namespace
}  // namespace floe::ipc
