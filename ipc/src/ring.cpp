#include "floe/ipc/ring.hpp"

#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <new>
#include <thread>

namespace floe::ipc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kMinCapacity = 256;
// Keeps max_payload() (capacity / 2 - 8) within RecordHeader::length's 32 bits.
constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;
constexpr std::uint64_t kHeaderBytes = sizeof(RecordHeader);

static_assert(offsetof(RingHeader, tail) == 1 * kCacheLine);
static_assert(offsetof(RingHeader, head) == 2 * kCacheLine);
static_assert(offsetof(RingHeader, consumer_sleeping) == 3 * kCacheLine);
static_assert(offsetof(RingHeader, records_pushed) == 4 * kCacheLine);
static_assert(offsetof(RingHeader, records_popped) == 5 * kCacheLine);
static_assert(offsetof(RingHeader, overflow) < 6 * kCacheLine);

/// Bytes a record of `size` bytes costs when written at `tail`: itself, plus a padding record over
/// the rest of the data area when it does not fit before the end.
constexpr std::uint64_t bytes_needed(std::uint64_t tail, std::uint64_t capacity, std::uint64_t size) noexcept {
  const std::uint64_t to_end = capacity - (tail & (capacity - 1));
  return size <= to_end ? size : to_end + size;
}

constexpr bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

constexpr bool is_valid_mode(std::uint32_t mode) noexcept {
  return mode >= static_cast<std::uint32_t>(NotifyMode::kEventfd) &&
         mode <= static_cast<std::uint32_t>(NotifyMode::kPoll);
}

using detail::read_record_header;
using detail::write_record_header;

/// Single-writer counter in shared memory: a plain load and store, no locked instruction.
void bump(std::atomic<std::uint64_t>& counter) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

/// What both handles learn from a validated header.
struct Attached {
  RingHeader* header = nullptr;
  std::byte* data = nullptr;
  std::uint64_t capacity = 0;
  NotifyMode mode = NotifyMode::kEventfd;
  std::uint32_t poll_interval_us = 0;
  std::uint64_t head = 0;
  std::uint64_t tail = 0;
};

Result<Attached> attach_ring(std::span<std::byte> memory, int notify_fd) {
  constexpr std::string_view op = "ring.attach";
  if (memory.data() == nullptr || memory.size() < sizeof(RingHeader)) {
    return logic_error(op, fmt::format("span of {} bytes is smaller than a ring header ({} bytes)", memory.size(),
                                       sizeof(RingHeader)));
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data()) % kCacheLine != 0) {
    return logic_error(op, "ring memory is not 64-byte aligned");
  }
  auto* header = reinterpret_cast<RingHeader*>(memory.data());
  Attached a;
  a.header = header;

  if (const std::uint32_t magic = read_once(header->magic); magic != kRingMagic) {
    return logic_error(op, fmt::format("bad magic {:#010x} (expected {:#010x})", magic, kRingMagic));
  }
  if (const std::uint32_t v = read_once(header->layout_version); v != kRingLayoutVersion) {
    return logic_error(op, fmt::format("layout version {} (this build speaks {})", v, kRingLayoutVersion));
  }
  a.capacity = read_once(header->capacity);
  if (!is_power_of_two(a.capacity) || a.capacity < kMinCapacity || a.capacity > kMaxCapacity) {
    return logic_error(op, fmt::format("capacity {} is not a power of two in [{}, {}]", a.capacity, kMinCapacity,
                                       kMaxCapacity));
  }
  const std::uint64_t data_offset = read_once(header->data_offset);
  if (data_offset < sizeof(RingHeader) || data_offset % kCacheLine != 0 || data_offset > memory.size() ||
      a.capacity > memory.size() - data_offset) {
    return logic_error(op, fmt::format("data area [{}, +{}) does not fit a {}-byte span after the header",
                                       data_offset, a.capacity, memory.size()));
  }
  a.data = memory.data() + data_offset;
  const std::uint32_t mode = read_once(header->notify_mode);
  if (!is_valid_mode(mode)) return logic_error(op, fmt::format("unknown notify mode {}", mode));
  a.mode = static_cast<NotifyMode>(mode);
  if (a.mode == NotifyMode::kEventfd && notify_fd < 0) {
    return logic_error(op, "the ring's notify mode is eventfd but no eventfd was given");
  }
  a.poll_interval_us = std::max<std::uint32_t>(1, read_once(header->poll_interval_us));

  // SYNC(tail): acquire, like every consumer load of tail: records published before we attach are
  // visible. SYNC(head): acquire, like the producer's refresh of head.
  a.head = header->head.load(std::memory_order_acquire);
  a.tail = header->tail.load(std::memory_order_acquire);
  if (a.head % kRecordAlign != 0 || a.tail % kRecordAlign != 0) {
    return logic_error(op, fmt::format("head {} or tail {} is not {}-byte aligned", a.head, a.tail, kRecordAlign));
  }
  if (a.head > a.tail) return logic_error(op, fmt::format("head {} is past tail {}", a.head, a.tail));
  if (a.tail - a.head > a.capacity) {
    return logic_error(op, fmt::format("tail {} is {} bytes past head {}, more than the capacity {}", a.tail,
                                       a.tail - a.head, a.head, a.capacity));
  }
  return a;
}

/// Re-reads the consumer's head after the cached value said "full". A hostile consumer may publish
/// anything: only a head in [head_cache, published tail] (8-aligned) is believed (records reserved
/// but not published cannot have been read); otherwise the ring stays as full as the producer last
/// knew, so the producer never overwrites bytes it has not been given back and never computes a
/// size out of range.
void refresh_head(const RingHeader& header, std::uint64_t& head_cache, std::uint64_t tail) noexcept {
  // SYNC(head): acquire pairs with the consumer's release in RingConsumer::release(): its reads of
  // the bytes up to head are finished before we overwrite them.
  const std::uint64_t head = header.head.load(std::memory_order_acquire);
  if (head >= head_cache && head <= tail && head % kRecordAlign == 0) head_cache = head;
}

}  // namespace

Status ring_init(std::span<std::byte> memory, const RingOptions& options) {
  constexpr std::string_view op = "ring.init";
  const std::uint64_t capacity = options.capacity;
  if (!is_power_of_two(capacity) || capacity < kMinCapacity || capacity > kMaxCapacity) {
    return logic_error(op, fmt::format("capacity {} is not a power of two in [{}, {}]", capacity, kMinCapacity,
                                       kMaxCapacity));
  }
  if (memory.data() == nullptr || reinterpret_cast<std::uintptr_t>(memory.data()) % kCacheLine != 0) {
    return logic_error(op, "ring memory is not 64-byte aligned");
  }
  if (memory.size() < ring_footprint(capacity)) {
    return logic_error(op, fmt::format("span of {} bytes is smaller than the ring's footprint {}", memory.size(),
                                       ring_footprint(capacity)));
  }
  if (!is_valid_mode(static_cast<std::uint32_t>(options.notify))) {
    return logic_error(op, fmt::format("unknown notify mode {}", static_cast<std::uint32_t>(options.notify)));
  }
  const auto poll_us = options.poll_interval.count();
  if (poll_us < 1 || poll_us > UINT32_MAX) {
    return logic_error(op, fmt::format("poll interval {} us is not in [1, {}]", poll_us, UINT32_MAX));
  }

  // Value-initialisation zeroes every index, counter and flag.
  auto* header = new (memory.data()) RingHeader();
  header->layout_version = kRingLayoutVersion;
  header->capacity = capacity;
  header->notify_mode = static_cast<std::uint32_t>(options.notify);
  header->poll_interval_us = static_cast<std::uint32_t>(poll_us);
  header->data_offset = sizeof(RingHeader);
  header->magic = kRingMagic;
  return {};
}

// ---------------------------------------------------------------------------------------------
// Producer

Result<RingProducer> RingProducer::attach(std::span<std::byte> memory, int notify_fd) {
  auto a = attach_ring(memory, notify_fd);
  if (!a) return tl::unexpected(std::move(a).error());
  RingProducer p;
  p.header_ = a->header;
  p.data_ = a->data;
  p.capacity_ = a->capacity;
  p.tail_ = a->tail;
  p.published_tail_ = a->tail;
  p.head_cache_ = a->head;
  // A producer that re-attaches continues the counts.
  p.pushed_ = a->header->records_pushed.load(std::memory_order_relaxed);
  p.high_water_ = a->header->high_water.load(std::memory_order_relaxed);
  p.notify_fd_ = notify_fd;
  p.mode_ = a->mode;
  return p;
}

std::byte* RingProducer::reserve_slow(std::uint16_t type, std::uint32_t length, std::uint16_t flags) noexcept {
  const std::uint64_t size = record_bytes(length);
  const std::uint64_t need = bytes_needed(tail_, capacity_, size);
  if (tail_ - head_cache_ + need > capacity_) {
    refresh_head(*header_, head_cache_, published_tail_);
    if (tail_ - head_cache_ + need > capacity_) {
      // SYNC(overflow): release pairs with the consumer side's acquire exchange of the flag: the
      // writes the lost record announced (tree values, change sequences) are visible to its rescan.
      header_->overflow.store(1, std::memory_order_release);
      // The consumer must come and see the flag even if nothing is published after this: it may
      // have freed space, found no flag and gone to sleep since we read head (its watchers would
      // stay stale until the next change). The same handshake as publish() wakes it if so.
      if (mode_ == NotifyMode::kEventfd || mode_ == NotifyMode::kFutex) wake_consumer();
      return nullptr;
    }
  }
  std::uint64_t pos = tail_ & (capacity_ - 1);
  if (need != size) {
    const std::uint64_t to_end = capacity_ - pos;
    write_record_header(data_ + pos, static_cast<std::uint32_t>(to_end - kHeaderBytes), kPadRecord, 0);
    tail_ += to_end;
    pos = 0;
  }
  write_record_header(data_ + pos, length, type, flags);
  tail_ += size;
  ++pushed_;
  return data_ + pos + kHeaderBytes;
}

void RingProducer::wake_consumer() noexcept {
  if (bell_ != nullptr) {
    bell_->ring(bell_slot_, notify_fd_);
    return;
  }
  // SYNC(sleep): full fence between publishing tail and reading the flag, paired with the
  // consumer's fence between setting the flag and re-reading tail (prepare_sleep): either it sees
  // our tail or we see its flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (header_->consumer_sleeping.load(std::memory_order_relaxed) == 0) return;
  // The exchange makes one sleep cost at most one signal. SYNC(sleep-flag): acquire pairs with the
  // consumer's release store of the flag, so its futex_word snapshot precedes our bump below.
  if (header_->consumer_sleeping.exchange(0, std::memory_order_acquire) != 1) return;
  if (mode_ == NotifyMode::kFutex) {
    // SYNC(futex-gen): release pairs with the consumer's acquire load of futex_word in wait().
    header_->futex_word.fetch_add(1, std::memory_order_release);
    (void)futex_wake(reinterpret_cast<const std::uint32_t*>(&header_->futex_word), 1);
  } else {
    eventfd_signal(notify_fd_);
  }
  bump(header_->notifications_sent);
}

bool RingProducer::push_wait(std::uint16_t type, std::span<const std::byte> payload,
                             std::chrono::nanoseconds timeout) noexcept {
  if (type == kPadRecord || payload.size() > max_payload()) return false;
  // Waits on free space itself rather than retrying try_push, which would raise the overflow
  // flag for a record that is not dropped.
  const std::uint64_t need = bytes_needed(tail_, capacity_, record_bytes(payload.size()));
  const auto deadline = Clock::now() + timeout;
  auto sleep = std::chrono::microseconds(1);
  for (unsigned attempt = 0;; ++attempt) {
    if (tail_ - head_cache_ + need > capacity_) refresh_head(*header_, head_cache_, published_tail_);
    if (tail_ - head_cache_ + need <= capacity_) return try_push(type, payload);
    if (attempt < 64) {
      cpu_relax();
      continue;
    }
    if (Clock::now() >= deadline) {
      // SYNC(overflow): as in try_reserve, and so is the wakeup.
      header_->overflow.store(1, std::memory_order_release);
      if (mode_ == NotifyMode::kEventfd || mode_ == NotifyMode::kFutex) wake_consumer();
      return false;
    }
    if (attempt < 128) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min<std::chrono::microseconds>(sleep * 2, std::chrono::milliseconds(1));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Consumer

Result<RingConsumer> RingConsumer::attach(std::span<std::byte> memory, int notify_fd) {
  auto a = attach_ring(memory, notify_fd);
  if (!a) return tl::unexpected(std::move(a).error());
  RingConsumer c;
  c.header_ = a->header;
  c.data_ = a->data;
  c.capacity_ = a->capacity;
  c.head_ = a->head;
  c.released_head_ = a->head;
  c.popped_ = a->header->records_popped.load(std::memory_order_relaxed);
  c.tail_cache_ = a->tail;
  c.peeked_next_ = a->head;
  c.notify_fd_ = notify_fd;
  c.mode_ = a->mode;
  c.poll_interval_ = std::chrono::microseconds(a->poll_interval_us);
  return c;
}

PopStatus RingConsumer::fail(const char* what) noexcept {
  error_ = Error{"ring", 0, what};
  return PopStatus::kCorrupt;
}

bool RingConsumer::refresh_tail() noexcept {
  // SYNC(tail): acquire pairs with the producer's release store in publish(): the bytes of every
  // record below this tail are visible.
  const std::uint64_t tail = header_->tail.load(std::memory_order_acquire);
  if (tail == tail_cache_) return false;
  // The consumer's own head_ is trusted (it never re-reads the shared head); the tail is not.
  // (Refreshing only when head_ == tail_cache_ makes "behind head" cover a tail that went back.)
  if (tail % kRecordAlign != 0) {
    fail(fmt::format("tail {} is not {}-byte aligned", tail, kRecordAlign).c_str());
  } else if (tail < head_) {
    fail(fmt::format("tail {} is behind head {}", tail, head_).c_str());
  } else if (tail - head_ > capacity_) {
    fail(fmt::format("tail {} is {} bytes past head {}, more than the capacity {}", tail, tail - head_, head_,
                     capacity_)
             .c_str());
  } else {
    tail_cache_ = tail;
  }
  return true;
}

PopStatus RingConsumer::peek_slow(RecordView& out) noexcept {
  for (;;) {
    if (error_) return PopStatus::kCorrupt;
    if (head_ == tail_cache_ && !has_data()) return PopStatus::kEmpty;
    if (error_) return PopStatus::kCorrupt;

    // head_ and tail_cache_ are 8-aligned with 0 < tail_cache_ - head_ <= capacity_, so the 8-byte
    // header at pos lies inside the data area.
    const std::uint64_t avail = tail_cache_ - head_;
    const std::uint64_t pos = head_ & (capacity_ - 1);
    const std::uint64_t to_end = capacity_ - pos;
    const RecordHeader rec = read_record_header(data_ + pos);

    if (rec.type == kPadRecord) {
      if (rec.length != to_end - kHeaderBytes) {
        return fail(fmt::format("pad record length {} at offset {} does not reach the end of the data area "
                                "(expected {})",
                                rec.length, pos, to_end - kHeaderBytes)
                        .c_str());
      }
      if (to_end > avail) {
        return fail(fmt::format("pad record at offset {} spans {} bytes but only {} are published", pos, to_end,
                                avail)
                        .c_str());
      }
      head_ += to_end;  // padding is invisible to the caller; released with the next record
      continue;
    }

    const std::uint64_t size = record_bytes(rec.length);
    if (size > avail) {
      return fail(
          fmt::format("record length {} exceeds published bytes {} at offset {}", rec.length, avail, pos).c_str());
    }
    if (size > to_end) {
      return fail(fmt::format("record length {} at offset {} runs past the end of the data area ({} bytes)",
                              rec.length, pos, capacity_)
                      .c_str());
    }
    out.type = rec.type;
    out.flags = rec.flags;
    out.payload = {data_ + pos + kHeaderBytes, rec.length};
    peeked_next_ = head_ + size;
    return PopStatus::kRecord;
  }
}

bool RingConsumer::prepare_sleep() noexcept {
  // The producer signals only in these modes; a spin or poll consumer must not block on anything.
  if (mode_ != NotifyMode::kEventfd && mode_ != NotifyMode::kFutex) return false;
  if (has_data()) return false;
  // SYNC(sleep-flag): release pairs with the producer's acquire exchange in publish(): the
  // futex_word snapshot wait() took before this store cannot see the bump made for this sleep.
  header_->consumer_sleeping.store(1, std::memory_order_release);
  // SYNC(sleep): full fence between setting the flag and re-reading tail, paired with the
  // producer's fence between publishing tail and reading the flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (has_data()) {
    header_->consumer_sleeping.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void RingConsumer::finish_sleep() noexcept {
  header_->consumer_sleeping.store(0, std::memory_order_relaxed);
  bump(header_->consumer_wakeups);
}

bool RingConsumer::wait(std::optional<std::chrono::nanoseconds> timeout) noexcept {
  if (has_data()) return true;
  const auto deadline = timeout ? Clock::now() + *timeout : Clock::time_point::max();
  // Time left, nullopt for "forever"; zero once the deadline has passed.
  auto remaining = [&]() -> std::optional<std::chrono::nanoseconds> {
    if (!timeout) return std::nullopt;
    return std::max(std::chrono::nanoseconds::zero(), deadline - Clock::now());
  };

  switch (mode_) {
    case NotifyMode::kSpin:
      for (std::uint32_t i = 1;; ++i) {
        cpu_relax();
        if (has_data()) return true;
        if (i % 64 == 0) {
          if (timeout && Clock::now() >= deadline) return false;
          // An oversubscribed machine may run the producer on this core: let it in now and then.
          if (i % 4096 == 0) std::this_thread::yield();
        }
      }

    case NotifyMode::kPoll:
      for (;;) {
        const auto left = remaining();
        if (left && left->count() == 0) return has_data();
        std::this_thread::sleep_for(left ? std::min<std::chrono::nanoseconds>(*left, poll_interval_)
                                         : std::chrono::nanoseconds(poll_interval_));
        bump(header_->consumer_wakeups);
        if (has_data()) return true;
      }

    case NotifyMode::kEventfd:
    case NotifyMode::kFutex:
      break;
  }

  for (;;) {
    const auto left = remaining();
    if (left && left->count() == 0) return has_data();
    // Taken before the flag is raised: a wake bumped after our re-check changes the word, so
    // FUTEX_WAIT returns at once instead of sleeping through it.
    // SYNC(futex-gen): acquire pairs with the producer's release fetch_add.
    const std::uint32_t generation = header_->futex_word.load(std::memory_order_acquire);
    if (!prepare_sleep()) return true;
    if (mode_ == NotifyMode::kFutex) {
      futex_wait(reinterpret_cast<const std::uint32_t*>(&header_->futex_word), generation, left);
    } else {
      // poll first: the eventfd may be non-blocking (event loops create it so), and it gives the timeout.
      pollfd pfd{notify_fd_, POLLIN, 0};
      timespec ts{};
      if (left) {
        ts.tv_sec = static_cast<time_t>(left->count() / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(left->count() % 1'000'000'000);
      }
      const int r = ::ppoll(&pfd, 1, left ? &ts : nullptr, nullptr);
      if (r > 0 && (pfd.revents & POLLIN) != 0) {
        (void)eventfd_drain(notify_fd_);
      } else if ((r < 0 && errno != EINTR) || (r > 0 && (pfd.revents & (POLLNVAL | POLLERR | POLLHUP)) != 0)) {
        // A closed or broken fd (or a signal pipe whose writer is gone) would turn this loop hot:
        // fall back to polling the ring.
        std::this_thread::sleep_for(left ? std::min<std::chrono::nanoseconds>(*left, poll_interval_)
                                         : std::chrono::nanoseconds(poll_interval_));
      }
    }
    finish_sleep();
    if (has_data()) return true;
  }
}

}  // namespace floe::ipc
