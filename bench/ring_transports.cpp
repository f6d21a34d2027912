// floe's ring across two processes, set up the way floe does it: the first role creates a sealed
// memfd Region and the eventfds, initialises the rings in it and hands everything to the second
// role over a SEQPACKET Channel (SCM_RIGHTS); the second role opens the region with Region::open,
// which checks seals, size and header, and attaches to the rings.
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "transports.hpp"

namespace floe::bench {

namespace {

using namespace floe::ipc;

constexpr std::uint16_t kMessageType = 1;
constexpr std::uint64_t kSetupMagic = 0x5055544553484E42ULL;  // "BNHSETUP"

/// The bytes of the setup packet; the fds ride along: region, then (eventfd mode) the first
/// role's eventfd, then the second role's.
struct SetupPacket {
  std::uint64_t magic;
  std::uint64_t region_size;
  std::uint64_t capacity;
  std::uint64_t ring_offset[2];  // in the payload: [0] first -> second, [1] second -> first
  std::uint32_t rings;
  std::uint32_t eventfds;
};

std::span<const std::byte> bytes_of(const auto& value) noexcept {
  return std::as_bytes(std::span(&value, 1));
}

/// How a consumer waits for its ring: the ring's own wait() (spin, futex, poll) or an EventLoop
/// watching its eventfd (eventfd mode), with the prepare_sleep()/finish_sleep() handshake.
class Waiter {
 public:
  Waiter() = default;
  Waiter(const Waiter&) = delete;
  Waiter& operator=(const Waiter&) = delete;

  Status use_loop(LoopBackend backend, int eventfd) {
    auto loop = EventLoop::create({.backend = backend});
    if (!loop) return tl::unexpected(std::move(loop).error());
    loop_ = std::move(*loop);
    // The loop reads (and so clears) the eventfd for us; being called is the whole message.
    auto id = loop_->watch_eventfd(eventfd, [this](std::uint64_t) { woke_ = true; });
    if (!id) return tl::unexpected(std::move(id).error());
    return {};
  }

  /// Blocks until `consumer` has data (or the loop fails). Sleeps only after prepare_sleep()
  /// agreed that the ring is empty with the flag up.
  bool wait(RingConsumer& consumer, std::string& error) {
    if (!loop_) {
      (void)consumer.wait(std::nullopt);
      return true;
    }
    if (spin_ns_ > 0 && spin_for_data(consumer)) return true;
    if (!consumer.prepare_sleep()) return true;  // data arrived meanwhile: drain again
    ++sleeps_;
    woke_ = false;
    while (!woke_) {
      auto r = loop_->run_once(std::nullopt);
      if (!r) {
        error = r.error().to_string();
        consumer.finish_sleep();
        return false;
      }
    }
    consumer.finish_sleep();
    return true;
  }

  [[nodiscard]] std::uint64_t sleeps() const noexcept { return sleeps_; }
  /// Poll the ring for up to `ns` before going to sleep (0: sleep as soon as it is empty).
  void set_spin(std::int64_t ns) noexcept { spin_ns_ = ns; }

 private:
  bool spin_for_data(RingConsumer& consumer) noexcept {
    const std::int64_t until = now_ns() + spin_ns_;
    for (unsigned i = 1;; ++i) {
      if (consumer.has_data()) return true;
      cpu_relax();
      if (i % 64 == 0 && now_ns() >= until) return false;
    }
  }

  std::int64_t spin_ns_ = 0;
  std::unique_ptr<EventLoop> loop_;
  bool woke_ = false;
  std::uint64_t sleeps_ = 0;
};

/// Everything one side holds: the mapping, its eventfds, its ring handles and its waiter.
struct Side {
  std::optional<Region> region;
  Fd own_eventfd;   // this side's consumer waits on it
  Fd peer_eventfd;  // this side's producer signals it
  std::optional<RingProducer> producer;
  std::optional<RingConsumer> consumer;
  Waiter waiter;
};

struct RingLayout {
  std::size_t capacity;
  std::size_t rings;
  [[nodiscard]] std::size_t footprint() const noexcept { return ring_footprint(capacity); }
  [[nodiscard]] std::size_t region_size() const noexcept { return kRegionPayloadOffset + rings * footprint(); }
  [[nodiscard]] std::size_t offset(std::size_t i) const noexcept { return i * footprint(); }
};

/// Creates the region and rings, sends them to the peer and waits for its "attached" packet.
/// Attaches `side` as producer of ring 0 (if produce) and consumer of ring 1 (or ring 0 if only
/// one ring and !produce).
bool create_and_send(RoleContext& ctx, Channel& channel, const RingLayout& layout, const RingOptions& ring_options,
                     LoopBackend backend, Side& side, bool produce, bool consume) {
  auto region = Region::create({.name = "floe-bench", .size = layout.region_size(), .kind = RegionKind::kRingPair});
  if (!region) {
    ctx.fail(region.error().to_string());
    return false;
  }
  const auto payload = region->payload();
  for (std::size_t i = 0; i < layout.rings; ++i) {
    if (auto s = ring_init(payload.subspan(layout.offset(i), layout.footprint()), ring_options); !s) {
      ctx.fail(s.error().to_string());
      return false;
    }
  }
  const bool eventfds = ring_options.notify == NotifyMode::kEventfd;
  Fd peer_own;  // the peer's own eventfd (we keep a copy to signal it)
  std::vector<int> fds{region->fd()};
  if (eventfds) {
    // The epoll backend wants non-blocking eventfds; io_uring takes either, a blocking one saves
    // it a linked poll.
    const bool nonblocking = backend == LoopBackend::kEpoll;
    auto mine = make_eventfd(nonblocking);
    auto theirs = make_eventfd(nonblocking);
    if (!mine || !theirs) {
      ctx.fail((mine ? theirs.error() : mine.error()).to_string());
      return false;
    }
    side.own_eventfd = std::move(*mine);
    side.peer_eventfd = std::move(*theirs);
    fds.push_back(side.own_eventfd.get());
    fds.push_back(side.peer_eventfd.get());
  }
  const SetupPacket setup{kSetupMagic,
                          region->size(),  // create() rounds up to the page size
                          layout.capacity,
                          {layout.offset(0), layout.offset(layout.rings > 1 ? 1 : 0)},
                          static_cast<std::uint32_t>(layout.rings),
                          eventfds ? 2U : 0U};
  if (auto s = channel.send(bytes_of(setup), fds); !s) {
    ctx.fail(s.error().to_string());
    return false;
  }
  if (auto ack = channel.receive(); !ack) {
    ctx.fail("waiting for the peer to attach: " + ack.error().to_string());
    return false;
  }
  side.region.emplace(std::move(*region));
  const auto mem = side.region->payload();
  if (produce) {
    auto p = RingProducer::attach(mem.subspan(layout.offset(0), layout.footprint()), side.peer_eventfd.get());
    if (!p) {
      ctx.fail(p.error().to_string());
      return false;
    }
    side.producer.emplace(std::move(*p));
  }
  if (consume) {
    const std::size_t ring = layout.rings > 1 ? 1 : 0;
    auto c = RingConsumer::attach(mem.subspan(layout.offset(ring), layout.footprint()), side.own_eventfd.get());
    if (!c) {
      ctx.fail(c.error().to_string());
      return false;
    }
    side.consumer.emplace(std::move(*c));
  }
  return true;
}

/// The second role: receives the region and eventfds, opens and attaches (consumer of ring 0,
/// producer of ring 1 when there are two), then tells the creator it is ready.
bool receive_and_attach(RoleContext& ctx, Channel& channel, Side& side, bool produce) {
  auto packet = channel.receive();
  if (!packet) {
    ctx.fail("waiting for the region: " + packet.error().to_string());
    return false;
  }
  SetupPacket setup{};
  if (packet->bytes.size() != sizeof setup) {
    ctx.fail("malformed setup packet");
    return false;
  }
  std::memcpy(&setup, packet->bytes.data(), sizeof setup);
  if (setup.magic != kSetupMagic || packet->fds.size() != 1 + setup.eventfds) {
    ctx.fail("malformed setup packet");
    return false;
  }
  auto region = Region::open(std::move(packet->fds[0]), {.expected_size = setup.region_size,
                                                         .require_kind = true,
                                                         .kind = RegionKind::kRingPair});
  if (!region) {
    ctx.fail(region.error().to_string());
    return false;
  }
  if (setup.eventfds == 2) {
    side.peer_eventfd = std::move(packet->fds[1]);  // the creator's own
    side.own_eventfd = std::move(packet->fds[2]);
  }
  side.region.emplace(std::move(*region));
  const auto mem = side.region->payload();
  const std::size_t footprint = ring_footprint(setup.capacity);
  if (setup.ring_offset[0] > mem.size() || setup.ring_offset[1] > mem.size()) {
    ctx.fail("ring offsets outside the region");
    return false;
  }
  auto c = RingConsumer::attach(mem.subspan(setup.ring_offset[0], std::min(footprint, mem.size() - setup.ring_offset[0])),
                                side.own_eventfd.get());
  if (!c) {
    ctx.fail(c.error().to_string());
    return false;
  }
  side.consumer.emplace(std::move(*c));
  if (produce) {
    auto p = RingProducer::attach(
        mem.subspan(setup.ring_offset[1], std::min(footprint, mem.size() - setup.ring_offset[1])),
        side.peer_eventfd.get());
    if (!p) {
      ctx.fail(p.error().to_string());
      return false;
    }
    side.producer.emplace(std::move(*p));
  }
  const char ready = 'R';
  if (auto s = channel.send(bytes_of(ready)); !s) {
    ctx.fail(s.error().to_string());
    return false;
  }
  return true;
}

bool start_waiter(RoleContext& ctx, Side& side, NotifyMode mode, LoopBackend backend) {
  if (mode != NotifyMode::kEventfd) return true;
  if (auto s = side.waiter.use_loop(backend, side.own_eventfd.get()); !s) {
    // A loop that cannot be created here means the backend is unavailable, not a broken ring.
    ctx.skip(fmt::format("{} event loop unavailable: {}", to_string(backend), s.error().to_string()));
    return false;
  }
  return true;
}

// --- round trips -------------------------------------------------------------------------------

class RingEndpoint {
 public:
  explicit RingEndpoint(std::unique_ptr<Side> side) noexcept : side_(std::move(side)) {}

  bool send(const Message& m) noexcept {
    if (side_->producer->try_push(kMessageType, bytes_of(m))) return true;
    error_ = "ring full";
    return false;
  }

  bool receive(Message& m) noexcept {
    RingConsumer& c = *side_->consumer;
    RecordView view;
    for (;;) {
      const PopStatus s = c.peek(view);
      if (s == PopStatus::kRecord) break;
      if (s == PopStatus::kCorrupt) {
        error_ = c.error() ? c.error()->to_string() : "corrupt ring";
        return false;
      }
      if (!side_->waiter.wait(c, error_)) return false;
    }
    if (view.payload.size() != sizeof m) {
      error_ = fmt::format("record of {} bytes", view.payload.size());
      return false;
    }
    std::memcpy(&m, view.payload.data(), sizeof m);
    c.pop();
    c.release();
    return true;
  }

  [[nodiscard]] std::uint64_t notifications() const noexcept {
    return side_->producer->header().notifications_sent.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::string error() const { return error_; }

 private:
  std::unique_ptr<Side> side_;
  std::string error_;
};

std::string mode_note(const RingRttOptions& o) {
  switch (o.mode) {
    case NotifyMode::kSpin: return "ring, NotifyMode::kSpin: RingConsumer::wait() spins on the tail";
    case NotifyMode::kFutex: return "ring, NotifyMode::kFutex: RingConsumer::wait() in FUTEX_WAIT on the header word";
    case NotifyMode::kPoll:
      return fmt::format("ring, NotifyMode::kPoll: RingConsumer::wait() sleeps {} us between checks",
                         o.poll_interval.count());
    case NotifyMode::kEventfd:
      return fmt::format("ring, NotifyMode::kEventfd: each consumer waits in an EventLoop ({}) on watch_eventfd, "
                         "prepare_sleep()/finish_sleep() around it",
                         to_string(o.backend));
  }
  return {};
}

// --- streaming ---------------------------------------------------------------------------------

/// Writes messages straight into the ring, `batch` records per publish(), or with push_wait()
/// one at a time when batch is 1. Spins briefly, then yields, while the ring is full.
class RingStreamProducer {
 public:
  RingStreamProducer(std::unique_ptr<Side> side, std::size_t batch) noexcept
      : side_(std::move(side)), batch_(batch) {}

  bool send(std::uint64_t first, std::uint64_t count) noexcept {
    RingProducer& p = *side_->producer;
    Message m = make_message(0);
    const std::uint64_t end = first + count;
    std::uint64_t seq = first;
    if (batch_ <= 1) {
      for (; seq < end; ++seq) {
        m.words[0] = seq;
        if (!p.push_wait(kMessageType, bytes_of(m), std::chrono::seconds(10))) {
          error_ = "push_wait: ring stayed full for 10 s";
          return false;
        }
      }
      return true;
    }
    unsigned idle = 0;
    while (seq < end) {
      std::size_t n = 0;
      for (; n < batch_ && seq < end; ++n, ++seq) {
        std::byte* slot = p.try_reserve(kMessageType, sizeof(Message));
        if (slot == nullptr) break;
        m.words[0] = seq;
        std::memcpy(slot, &m, sizeof m);
      }
      if (n > 0) {
        p.publish();
        idle = 0;
      } else if (++idle < 256) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
    return true;
  }
  [[nodiscard]] std::uint64_t notifications() const noexcept {
    return side_->producer->header().notifications_sent.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::string error() const { return error_; }

 private:
  std::unique_ptr<Side> side_;
  std::size_t batch_;
  std::string error_;
};

/// Drains up to `drain_max` records per call (one head release per drain); when the ring is
/// empty it sleeps in its event loop after prepare_sleep().
class RingStreamConsumer {
 public:
  RingStreamConsumer(std::unique_ptr<Side> side, std::size_t drain_max) noexcept
      : side_(std::move(side)), drain_max_(drain_max) {}

  bool receive(std::uint64_t& next, std::uint64_t end, std::uint64_t& sum) noexcept {
    RingConsumer& c = *side_->consumer;
    for (;;) {
      bool in_order = true;
      auto n = c.drain(
          [&](const RecordView& view) {
            Message m;
            if (view.payload.size() != sizeof m) {
              in_order = false;
              return;
            }
            std::memcpy(&m, view.payload.data(), sizeof m);
            in_order = in_order && m.words[0] == next;
            ++next;
            sum = fold(sum, m);
          },
          std::min<std::uint64_t>(drain_max_, end - next));
      if (!n) {
        error_ = n.error().to_string();
        return false;
      }
      if (!in_order) {
        error_ = "message out of order or of the wrong size";
        return false;
      }
      if (*n > 0) return true;
      if (!side_->waiter.wait(c, error_)) return false;
    }
  }
  [[nodiscard]] std::uint64_t aux() const noexcept { return side_->waiter.sleeps(); }
  [[nodiscard]] std::string error() const { return error_; }

 private:
  std::unique_ptr<Side> side_;
  std::size_t drain_max_;
  std::string error_;
};

}  // namespace

BenchResult bench_ring_rtt(const RunPlan& base, const RingRttOptions& options) {
  RunPlan plan = base;
  if (plan.note.empty()) plan.note = mode_note(options);
  auto channels = Channel::pair();
  if (!channels) return failed_result(plan.name, channels.error().to_string());
  Channel& first = channels->first;
  Channel& second = channels->second;
  const RingLayout layout{options.capacity, 2};
  const RingOptions ring_options{.capacity = options.capacity, .notify = options.mode,
                                 .poll_interval = options.poll_interval};
  return run_round_trips<RingEndpoint>(
      plan,
      [&](RoleContext& ctx) -> std::unique_ptr<RingEndpoint> {
        auto side = std::make_unique<Side>();
        if (!create_and_send(ctx, first, layout, ring_options, options.backend, *side, true, true)) return nullptr;
        if (!start_waiter(ctx, *side, options.mode, options.backend)) return nullptr;
        return std::make_unique<RingEndpoint>(std::move(side));
      },
      [&](RoleContext& ctx) -> std::unique_ptr<RingEndpoint> {
        auto side = std::make_unique<Side>();
        if (!receive_and_attach(ctx, second, *side, true)) return nullptr;
        if (!start_waiter(ctx, *side, options.mode, options.backend)) return nullptr;
        return std::make_unique<RingEndpoint>(std::move(side));
      });
}

BenchResult bench_ring_stream(const RunPlan& base, const RingStreamOptions& options) {
  RunPlan plan = base;
  auto channels = Channel::pair();
  if (!channels) return failed_result(plan.name, channels.error().to_string());
  Channel& first = channels->first;
  Channel& second = channels->second;
  const RingLayout layout{options.capacity, 1};
  const RingOptions ring_options{.capacity = options.capacity, .notify = NotifyMode::kEventfd};
  const std::string how = options.batch > 1
                              ? fmt::format("producer batches {} records per try_reserve/publish", options.batch)
                              : std::string("producer: push_wait per message (no batching)");
  plan.note = fmt::format("ring {} KiB, NotifyMode::kEventfd; {}; consumer drains up to {} per release and sleeps "
                          "in an EventLoop ({}) only when empty",
                          options.capacity / 1024, how, options.drain_max, to_string(options.backend));
  if (options.consumer_spin.count() > 0)
    plan.note += fmt::format("; consumer polls {} us before it sleeps", options.consumer_spin.count() / 1000);
  return run_stream<RingStreamProducer, RingStreamConsumer>(
      plan,
      [&](RoleContext& ctx) -> std::unique_ptr<RingStreamProducer> {
        auto side = std::make_unique<Side>();
        if (!create_and_send(ctx, first, layout, ring_options, options.backend, *side, true, false)) return nullptr;
        return std::make_unique<RingStreamProducer>(std::move(side), options.batch);
      },
      [&](RoleContext& ctx) -> std::unique_ptr<RingStreamConsumer> {
        auto side = std::make_unique<Side>();
        if (!receive_and_attach(ctx, second, *side, false)) return nullptr;
        if (!start_waiter(ctx, *side, NotifyMode::kEventfd, options.backend)) return nullptr;
        side->waiter.set_spin(options.consumer_spin.count());
        return std::make_unique<RingStreamConsumer>(std::move(side), options.drain_max);
      },
      "consumer sleeps per message");
}

}  // namespace floe::bench
