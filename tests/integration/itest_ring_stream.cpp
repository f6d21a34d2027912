// Two real processes stream records through a pair of rings in one sealed memfd region, in every
// notification mode: parent -> child, child -> parent, then a ping-pong both ways. The region and
// the two eventfds travel to the child over a SEQPACKET Channel, as the core grants a provider its
// rings. Every record carries its sequence number and a checksum of its bytes.
#include <signal.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "support/child_process.hpp"
#include "support/environment.hpp"
#include "support/watchdog.hpp"

namespace floe::ipc {
namespace {

using namespace std::chrono_literals;

constexpr int kChildSocket = 3;
constexpr std::size_t kCapacity = 64 * 1024;
constexpr std::uint16_t kStreamType = 1;
constexpr std::uint16_t kPingType = 2;
constexpr std::uint16_t kPongType = 3;

/// What the parent tells the child (one packet, with the region and the two eventfds).
struct StreamParams {
  std::uint32_t mode;
  std::uint32_t capacity;
  std::uint64_t ring_a_offset;  // parent -> child, within the region's payload
  std::uint64_t ring_b_offset;  // child -> parent
  std::uint64_t records;        // per direction
  std::uint64_t pingpongs;
};
static_assert(std::is_trivially_copyable_v<StreamParams>);

std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::uint64_t fnv1a(std::span<const std::byte> bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const std::byte b : bytes) h = (h ^ static_cast<std::uint64_t>(b)) * 0x100000001b3ULL;
  return h;
}

/// Record `seq` of stream `salt`: [seq][bytes from splitmix(seq)][fnv1a of everything before].
std::span<const std::byte> make_record(std::vector<std::byte>& buf, std::uint64_t seq, std::uint64_t salt) {
  std::uint64_t state = seq * 0x2545F4914F6CDD1DULL + salt;
  const std::size_t size = 16 + splitmix(state) % 496;
  buf.resize(size);
  std::memcpy(buf.data(), &seq, 8);
  for (std::size_t i = 8; i < size - 8; ++i) buf[i] = static_cast<std::byte>(splitmix(state) & 0xFF);
  const std::uint64_t sum = fnv1a(std::span(buf).first(size - 8));
  std::memcpy(buf.data() + size - 8, &sum, 8);
  return buf;
}

/// Empty if `payload` is exactly record `seq` of stream `salt`.
std::string check_record(std::span<const std::byte> payload, std::uint64_t seq, std::uint64_t salt,
                         std::vector<std::byte>& scratch) {
  const auto expected = make_record(scratch, seq, salt);
  if (payload.size() != expected.size()) {
    return "record " + std::to_string(seq) + ": " + std::to_string(payload.size()) + " bytes, expected " +
           std::to_string(expected.size());
  }
  std::uint64_t got_seq = 0;
  std::memcpy(&got_seq, payload.data(), 8);
  if (got_seq != seq) return "expected record " + std::to_string(seq) + ", got " + std::to_string(got_seq);
  std::uint64_t sum = 0;
  std::memcpy(&sum, payload.data() + payload.size() - 8, 8);
  if (sum != fnv1a(payload.first(payload.size() - 8))) return "record " + std::to_string(seq) + ": bad checksum";
  if (!std::ranges::equal(payload, expected)) return "record " + std::to_string(seq) + ": content differs";
  return {};
}

void push_blocking(RingProducer& producer, std::uint16_t type, std::span<const std::byte> payload) {
  while (!producer.push_wait(type, payload, 1s)) {
  }
}

/// Sends `count` records of stream `salt`.
void send_stream(RingProducer& producer, std::uint64_t count, std::uint64_t salt) {
  std::vector<std::byte> buf;
  for (std::uint64_t seq = 0; seq < count; ++seq) push_blocking(producer, kStreamType, make_record(buf, seq, salt));
}

/// Receives `count` records of stream `salt` with wait() (no timeout); empty string if all intact.
std::string receive_stream(RingConsumer& consumer, std::uint64_t count, std::uint64_t salt) {
  std::vector<std::byte> scratch;
  std::string first_error;
  std::uint64_t seq = 0;
  while (seq < count) {
    if (!consumer.wait()) continue;
    const auto n = consumer.drain([&](const RecordView& v) {
      if (first_error.empty()) {
        first_error = v.type != kStreamType ? "record " + std::to_string(seq) + ": wrong type"
                                            : check_record(v.payload, seq, salt, scratch);
      }
      ++seq;
    });
    if (!n) return n.error().to_string();
  }
  return first_error;
}

/// Pops exactly one record of `type` into `out` (waiting without a timeout).
std::string pop_one(RingConsumer& consumer, std::uint16_t type, std::vector<std::byte>& out) {
  for (;;) {
    if (!consumer.wait()) continue;
    RecordView view;
    const PopStatus s = consumer.peek(view);
    if (s == PopStatus::kCorrupt) return consumer.error()->to_string();
    if (s == PopStatus::kEmpty) continue;
    if (view.type != type) return "unexpected record type " + std::to_string(view.type);
    out.assign(view.payload.begin(), view.payload.end());
    consumer.pop();
    consumer.release();
    return {};
  }
}

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "ring_peer: %s\n", what.c_str());
  return code;
}

// ---------------------------------------------------------------------------------------------
// Child: consumes ring A, produces ring B, then echoes pings from A as pongs on B.

FLOE_CHILD_ROLE(ring_peer) {
  Channel channel = Channel::adopt(Fd(kChildSocket));
  auto packet = channel.receive();
  if (!packet) return child_fail(10, packet.error().to_string());
  StreamParams params{};
  if (packet->bytes.size() != sizeof params || packet->fds.size() != 3) return child_fail(11, "malformed params");
  std::memcpy(&params, packet->bytes.data(), sizeof params);

  auto region = Region::open(std::move(packet->fds[0]), {.require_kind = true, .kind = RegionKind::kRingPair});
  if (!region) return child_fail(12, region.error().to_string());
  const int efd_a = packet->fds[1].get();  // ours: we consume ring A
  const int efd_b = packet->fds[2].get();  // the parent's: it consumes ring B
  const auto payload = region->payload();
  if (params.ring_a_offset > payload.size() || params.ring_b_offset > payload.size()) {
    return child_fail(13, "ring offsets outside the region");
  }
  auto consumer = RingConsumer::attach(payload.subspan(params.ring_a_offset), efd_a);
  if (!consumer) return child_fail(14, consumer.error().to_string());
  auto producer = RingProducer::attach(payload.subspan(params.ring_b_offset), efd_b);
  if (!producer) return child_fail(15, producer.error().to_string());

  if (auto e = receive_stream(*consumer, params.records, 0xA); !e.empty()) return child_fail(20, "stream A: " + e);
  send_stream(*producer, params.records, 0xB);

  std::vector<std::byte> ping;
  for (std::uint64_t i = 0; i < params.pingpongs; ++i) {
    if (auto e = pop_one(*consumer, kPingType, ping); !e.empty()) return child_fail(30, "ping: " + e);
    push_blocking(*producer, kPongType, ping);
  }

  const std::string done = "done";
  if (!channel.send(std::as_bytes(std::span(done)))) return child_fail(40, "could not report");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Parent

/// Kills `pid` and aborts unless destroyed within `limit` (a lost wakeup hangs a wait()).
std::string describe(const RingHeader& h) {
  return "tail " + std::to_string(h.tail.load()) + " head " + std::to_string(h.head.load()) + " sleeping " +
         std::to_string(h.consumer_sleeping.load()) + " signals " + std::to_string(h.notifications_sent.load());
}

class RingStreamAcrossProcesses : public ::testing::TestWithParam<NotifyMode> {};

TEST_P(RingStreamAcrossProcesses, StreamsBothWaysAndPingPongsIntact) {
  const NotifyMode mode = GetParam();
  const std::uint64_t records = test::scaled(1'000'000, 10'000);
  const std::uint64_t pingpongs = test::scaled(10'000, 200);

  const std::size_t ring_bytes = ring_footprint(kCapacity);
  const std::size_t offset_b = (ring_bytes + kCacheLine - 1) / kCacheLine * kCacheLine;
  auto region = Region::create(
      {.name = "itest-ring-stream", .size = kRegionPayloadOffset + offset_b + ring_bytes, .kind = RegionKind::kRingPair});
  ASSERT_TRUE(region) << region.error().to_string();
  const auto payload = region->payload();
  const RingOptions options{.capacity = kCapacity, .notify = mode, .poll_interval = 50us};
  ASSERT_TRUE(ring_init(payload.subspan(0, ring_bytes), options));
  ASSERT_TRUE(ring_init(payload.subspan(offset_b, ring_bytes), options));

  auto efd_a = make_eventfd();                    // the child's, blocking
  auto efd_b = make_eventfd(/*nonblocking=*/true);  // ours, non-blocking as an event loop's would be
  ASSERT_TRUE(efd_a && efd_b);
  auto producer = RingProducer::attach(payload.subspan(0, ring_bytes), efd_a->get());
  auto consumer = RingConsumer::attach(payload.subspan(offset_b, ring_bytes), efd_b->get());
  ASSERT_TRUE(producer) << producer.error().to_string();
  ASSERT_TRUE(consumer) << consumer.error().to_string();

  auto pair = Channel::pair();
  ASSERT_TRUE(pair) << pair.error().to_string();
  auto child = test::spawn_child("ring_peer", {}, {pair->second.fd()});
  ASSERT_TRUE(child) << child.error().to_string();
  { Channel child_end = std::move(pair->second); }
  Channel& channel = pair->first;

  auto share = region->share();
  ASSERT_TRUE(share) << share.error().to_string();
  const StreamParams params{static_cast<std::uint32_t>(mode), kCapacity, 0, offset_b, records, pingpongs};
  const int fds[] = {share->get(), efd_a->get(), efd_b->get()};
  ASSERT_TRUE(channel.send(std::as_bytes(std::span(&params, 1)), fds));

  test::Watchdog watchdog(120s, [&] {
    return std::string(to_string(mode)) + ": ring A " + describe(producer->header()) + "; ring B " +
           describe(consumer->header());
  }, child->pid());

  send_stream(*producer, records, 0xA);
  EXPECT_EQ(receive_stream(*consumer, records, 0xB), "");

  std::vector<std::byte> buf;
  std::vector<std::byte> pong;
  for (std::uint64_t i = 0; i < pingpongs; ++i) {
    const auto ping = make_record(buf, i, 0xC);
    push_blocking(*producer, kPingType, ping);
    const std::string e = pop_one(*consumer, kPongType, pong);
    ASSERT_EQ(e, "") << "pong " << i;
    ASSERT_TRUE(std::ranges::equal(pong, ping)) << "pong " << i << " differs from its ping";
  }

  auto report = channel.receive();
  ASSERT_TRUE(report) << report.error().to_string();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(report->bytes.data()), report->bytes.size()), "done");
  EXPECT_EQ(child->wait(30s), 0);

  const RingHeader& a = producer->header();
  const RingHeader& b = consumer->header();
  EXPECT_EQ(a.records_popped.load(), records + pingpongs);
  EXPECT_EQ(b.records_pushed.load(), records + pingpongs);
  EXPECT_EQ(a.head.load(), a.tail.load());
  EXPECT_EQ(b.head.load(), b.tail.load());
  if (mode == NotifyMode::kSpin || mode == NotifyMode::kPoll) {
    EXPECT_EQ(a.notifications_sent.load() + b.notifications_sent.load(), 0u);
  } else {
    // Every ping finds its consumer asleep or about to be; each signal needs a sleep announced.
    EXPECT_LE(a.notifications_sent.load(), records + pingpongs);
  }
  std::printf("[ %s ] %llu records each way, %llu ping-pongs; signals A %llu B %llu\n",
              std::string(to_string(mode)).c_str(), static_cast<unsigned long long>(records),
              static_cast<unsigned long long>(pingpongs), static_cast<unsigned long long>(a.notifications_sent.load()),
              static_cast<unsigned long long>(b.notifications_sent.load()));
}

INSTANTIATE_TEST_SUITE_P(AllModes, RingStreamAcrossProcesses,
                         ::testing::Values(NotifyMode::kEventfd, NotifyMode::kFutex, NotifyMode::kSpin,
                                           NotifyMode::kPoll),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace floe::ipc
