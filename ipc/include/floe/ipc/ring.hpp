// SPSC ring of variable-length records in shared memory.
//
// RingHeader (shared data) sits at the start of a 64-byte aligned span inside a Region, followed by
// `capacity` bytes of record data. RingProducer and RingConsumer are process-local handles; each
// keeps a cached copy of the other side's index so that the shared lines are touched only when the
// cached value says the ring looks full (producer) or empty (consumer).
//
// A record is an 8-byte RecordHeader {length, type, flags} and `length` payload bytes, padded to a
// multiple of 8. A record never wraps: if it does not fit before the end of the data area the
// producer writes a padding record (type kPadRecord) over the rest and starts again at offset 0.
//
// The consumer treats every byte of the region as hostile: an index out of range, a misaligned
// index, a length larger than what was published, or a bad padding record puts the consumer into a
// sticky error state; it never reads outside the data area.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>

#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"

namespace floe::ipc {

inline constexpr std::uint32_t kRingMagic = 0x474E4952;  // "RING"
inline constexpr std::uint32_t kRingLayoutVersion = 2;  // 2: statistics moved off the index lines
inline constexpr std::uint16_t kPadRecord = 0xFFFF;
inline constexpr std::size_t kRecordAlign = 8;

struct RecordHeader {
  std::uint32_t length;  // payload bytes (padding not included)
  std::uint16_t type;    // user-defined; kPadRecord is reserved
  std::uint16_t flags;   // user-defined
};
static_assert(sizeof(RecordHeader) == 8);
static_assert(sizeof(RecordHeader) == kRecordAlign);

/// Bytes a record with `length` payload bytes takes in the ring: its header plus the payload
/// rounded up to kRecordAlign.
[[nodiscard]] constexpr std::uint64_t record_bytes(std::uint64_t length) noexcept {
  return sizeof(RecordHeader) + ((length + kRecordAlign - 1) & ~(std::uint64_t{kRecordAlign} - 1));
}

namespace detail {
/// The 8-byte record header at `p` (8-aligned) in a single load: a hostile producer may be
/// rewriting it, and the value checked must be the value used.
inline RecordHeader read_record_header(const std::byte* p) noexcept {
  const std::uint64_t raw = *reinterpret_cast<const volatile std::uint64_t*>(p);
  RecordHeader h;
  std::memcpy(&h, &raw, sizeof h);
  return h;
}
inline void write_record_header(std::byte* p, std::uint32_t length, std::uint16_t type,
                                std::uint16_t flags) noexcept {
  const RecordHeader h{length, type, flags};
  std::memcpy(p, &h, sizeof h);
}
}  // namespace detail

/// The shared part of a ring. Standard layout, offsets only, every cache line explicit.
///
/// The two index lines hold nothing but their index: a spinning consumer reads `tail` in a loop,
/// and every other store to that line would cost the producer one more coherence round trip before
/// its tail store lands (bench/README.md, "Where the time goes: ring_spin"). The statistics for
/// inspectors live on lines of their own; the handles count locally and store them once per
/// publish() / release(), after the index.
struct RingHeader {
  // Line 0: written once by ring_init, read-only afterwards.
  alignas(kCacheLine) std::uint32_t magic;
  std::uint32_t layout_version;
  std::uint64_t capacity;          // bytes of record data; a power of two
  std::uint32_t notify_mode;       // NotifyMode
  std::uint32_t poll_interval_us;  // for NotifyMode::kPoll
  std::uint64_t data_offset;       // from the start of this header to the data area

  // Line 1: producer-owned, polled by the consumer.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // bytes ever published (monotonic)

  // Line 2: consumer-owned, read by the producer only when the ring looks full.
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // bytes ever released (monotonic)

  // Line 3: the wake handshake, written by both sides (rarely, by construction).
  alignas(kCacheLine) std::atomic<std::uint32_t> consumer_sleeping;
  std::atomic<std::uint32_t> futex_word;  // NotifyMode::kFutex: bumped before FUTEX_WAKE

  // Line 4: producer statistics, written by the producer after its tail store; no peer reads them
  // on a hot path.
  alignas(kCacheLine) std::atomic<std::uint64_t> records_pushed;  // records published
  std::atomic<std::uint64_t> notifications_sent;  // signals (syscalls) made by the producer
  std::atomic<std::uint64_t> high_water;          // most bytes ever in use, as the producer saw it

  // Line 5: consumer statistics, and the overflow flag, which the consumer side polls and clears
  // after its drains while the producer sets it only when a push fails.
  alignas(kCacheLine) std::atomic<std::uint64_t> records_popped;  // records released
  std::atomic<std::uint64_t> consumer_wakeups;  // times the consumer returned from sleeping
  std::atomic<std::uint32_t> overflow;  // set (release) when a push failed for lack of space; the
                                        // consumer side clears it with an acquire exchange and rescans
};
static_assert(std::is_standard_layout_v<RingHeader>);
static_assert(sizeof(RingHeader) == 6 * kCacheLine);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct RingOptions {
  std::size_t capacity = 64 * 1024;  // data bytes, power of two, >= 256
  NotifyMode notify = NotifyMode::kEventfd;
  std::chrono::microseconds poll_interval{100};
};

/// Bytes a ring with `capacity` data bytes needs (header + data), a multiple of kCacheLine.
[[nodiscard]] constexpr std::size_t ring_footprint(std::size_t capacity) noexcept {
  return sizeof(RingHeader) + capacity;
}
/// Initialises a ring in `memory` (64-byte aligned, >= ring_footprint(capacity) bytes). Creator only,
/// before the region is shared.
[[nodiscard]] Status ring_init(std::span<std::byte> memory, const RingOptions& options);

/// What the consumer sees of one record. `payload` points into shared memory and is valid until
/// the record is popped; the producer may not touch it before then, but a hostile producer may,
/// so copy out anything you validate.
struct RecordView {
  std::uint16_t type = 0;
  std::uint16_t flags = 0;
  std::span<const std::byte> payload;
};

/// Producer handle. Exactly one per ring, across all processes. Not thread-safe.
class RingProducer {
 public:
  /// Validates the header in `memory` (magic, version, capacity, data_offset within `memory`).
  /// `notify_fd` is the consumer's eventfd when the ring's mode is kEventfd (ignored otherwise;
  /// required in kEventfd mode, since a producer that cannot signal would strand a sleeping consumer).
  [[nodiscard]] static Result<RingProducer> attach(std::span<std::byte> memory, int notify_fd = -1);

  /// Copies one record in, publishes it and wakes the consumer if it sleeps. False if full (and
  /// sets the header's overflow flag). Never blocks.
  [[nodiscard]] bool try_push(std::uint16_t type, std::span<const std::byte> payload,
                              std::uint16_t flags = 0) noexcept {
    if (type == kPadRecord || payload.size() > max_payload()) return false;
    std::byte* dst = reserve(type, static_cast<std::uint32_t>(payload.size()), flags);
    if (dst == nullptr) return false;
    if (!payload.empty()) std::memcpy(dst, payload.data(), payload.size());
    publish();
    return true;
  }

  /// Batch API: reserve space for a record and fill it in place; nothing is visible to the
  /// consumer until publish(). Returns nullptr if it does not fit (overflow flag set).
  [[nodiscard]] std::byte* try_reserve(std::uint16_t type, std::uint32_t length,
                                       std::uint16_t flags = 0) noexcept {
    FLOE_ASSERT(type != kPadRecord);
    // Too big for this ring ever: refused without the overflow flag, which means "try again later".
    if (type == kPadRecord || length > max_payload()) return nullptr;
    return reserve(type, length, flags);
  }

  /// Makes every reserved record visible with one release store, then wakes a sleeping consumer.
  /// Updates the header's records_pushed and high_water after the tail store.
  void publish() noexcept {
    if (tail_ == published_tail_) return;
    published_tail_ = tail_;
    // SYNC(tail): release pairs with the consumer's acquire loads of tail: every record byte written
    // before this store is visible to a consumer that sees the new tail.
    header_->tail.store(tail_, std::memory_order_release);
    // Statistics only after the tail, on a line the consumer does not poll.
    header_->records_pushed.store(pushed_, std::memory_order_relaxed);
    // Bytes in use as far as the producer knows (its head may be stale, so this errs high).
    if (tail_ - head_cache_ > high_water_) {
      high_water_ = tail_ - head_cache_;
      header_->high_water.store(high_water_, std::memory_order_relaxed);
    }
    // Spin and poll consumers never sleep on a signal, so they cost the producer no fence.
    if (mode_ == NotifyMode::kEventfd || mode_ == NotifyMode::kFutex) wake_consumer();
  }

  /// Spins, then yields, then sleeps in growing steps (up to 1 ms) until the record fits or
  /// `timeout` passes. For producers that must not drop (benchmarks, requests with back-pressure).
  [[nodiscard]] bool push_wait(std::uint16_t type, std::span<const std::byte> payload,
                               std::chrono::nanoseconds timeout) noexcept;

  /// capacity / 2 - 8: the largest payload that fits an empty ring wherever the indices stand.
  [[nodiscard]] std::size_t max_payload() const noexcept {
    // A record of half the capacity fits either before the end or, after padding, before the head.
    return capacity_ / 2 - sizeof(RecordHeader);
  }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  /// The notify mode the header named when this handle attached.
  [[nodiscard]] NotifyMode mode() const noexcept { return mode_; }
  [[nodiscard]] RingHeader& header() const noexcept { return *header_; }

  /// kEventfd rings only: from now on publish() rings `bell` (slot `slot`, writing `eventfd` if
  /// its consumer sleeps) instead of the ring's own flag and notify fd. `bell` must outlive this
  /// handle; its consumer must wait on the doorbell, not on the ring (doorbell.hpp).
  void use_doorbell(Doorbell* bell, std::uint32_t slot, int eventfd) noexcept {
    bell_ = bell;
    bell_slot_ = slot;
    if (bell != nullptr) notify_fd_ = eventfd;
  }

 private:
  /// try_reserve after its argument checks (type is not kPadRecord, length <= max_payload()).
  std::byte* reserve(std::uint16_t type, std::uint32_t length, std::uint16_t flags) noexcept {
    const std::uint64_t size = record_bytes(length);
    const std::uint64_t pos = tail_ & (capacity_ - 1);
    // Fits before the end of the data area and in the space the cached head leaves: no padding,
    // no look at the consumer's line.
    if (size <= capacity_ - pos && tail_ - head_cache_ + size <= capacity_) [[likely]] {
      detail::write_record_header(data_ + pos, length, type, flags);
      tail_ += size;
      ++pushed_;
      return data_ + pos + sizeof(RecordHeader);
    }
    return reserve_slow(type, length, flags);
  }
  /// reserve() when the record needs padding first or the ring looks full.
  std::byte* reserve_slow(std::uint16_t type, std::uint32_t length, std::uint16_t flags) noexcept;
  /// publish()'s handshake with a consumer that may sleep (kEventfd, kFutex).
  void wake_consumer() noexcept;

  RingHeader* header_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::uint64_t tail_ = 0;            // local tail, ahead of the published one during a batch
  std::uint64_t published_tail_ = 0;  // last tail stored to the header (never re-read from it)
  std::uint64_t head_cache_ = 0;      // last head read from the consumer's line
  std::uint64_t pushed_ = 0;          // records reserved; stored to records_pushed by publish()
  std::uint64_t high_water_ = 0;      // last value stored to high_water
  int notify_fd_ = -1;
  NotifyMode mode_ = NotifyMode::kEventfd;
  Doorbell* bell_ = nullptr;  // use_doorbell()
  std::uint32_t bell_slot_ = 0;
};

enum class PopStatus : std::uint8_t { kRecord, kEmpty, kCorrupt };

/// Consumer handle. Exactly one per ring, across all processes. Not thread-safe.
class RingConsumer {
 public:
  /// Validates the header like RingProducer::attach. `notify_fd` is this consumer's eventfd
  /// (kEventfd mode). The ring's current head is trusted only after range checks.
  [[nodiscard]] static Result<RingConsumer> attach(std::span<std::byte> memory, int notify_fd = -1);

  /// Looks at the next record without consuming it. kCorrupt is sticky; error() says why.
  [[nodiscard]] PopStatus peek(RecordView& out) noexcept {
    if (head_ == tail_cache_ && !has_data()) return PopStatus::kEmpty;
    if (!error_) [[likely]] {
      // head_ and tail_cache_ are 8-aligned with 0 < tail_cache_ - head_ <= capacity_ (has_data
      // checked the tail), so the header at pos lies inside the data area.
      const std::uint64_t pos = head_ & (capacity_ - 1);
      const RecordHeader rec = detail::read_record_header(data_ + pos);
      const std::uint64_t size = record_bytes(rec.length);
      // An ordinary record inside what was published and before the end of the area; anything
      // else (padding, or a bad length) is sorted out by peek_slow, which reads it afresh.
      if (rec.type != kPadRecord && size <= tail_cache_ - head_ && size <= capacity_ - pos) [[likely]] {
        out.type = rec.type;
        out.flags = rec.flags;
        out.payload = {data_ + pos + sizeof(RecordHeader), rec.length};
        peeked_next_ = head_ + size;
        return PopStatus::kRecord;
      }
    }
    return peek_slow(out);
  }
  /// Consumes the record returned by the last successful peek (locally; see release()).
  void pop() noexcept {
    // Without a successful peek since the last pop there is nothing to consume.
    if (peeked_next_ <= head_) return;
    head_ = peeked_next_;
    ++popped_;
  }
  /// Publishes the local head so the producer can reuse the space, then the header's
  /// records_popped. Call once per batch.
  void release() noexcept {
    if (head_ == released_head_) return;
    released_head_ = head_;
    // SYNC(head): release pairs with the producer's acquire in refresh_head(): our reads of every
    // byte below head are done before the producer may reuse them.
    header_->head.store(head_, std::memory_order_release);
    header_->records_popped.store(popped_, std::memory_order_relaxed);
  }

  /// Peeks, calls fn(const RecordView&) and pops, for up to `max` records, then releases.
  /// Returns the number handled; on corruption returns an Error (also kept in error()).
  template <typename Fn>
  [[nodiscard]] Result<std::size_t> drain(Fn&& fn, std::size_t max = SIZE_MAX) {
    std::size_t n = 0;
    RecordView view;
    while (n < max) {
      const PopStatus s = peek(view);
      if (s == PopStatus::kEmpty) break;
      if (s == PopStatus::kCorrupt) {
        release();
        return tl::unexpected(*error_);
      }
      fn(view);
      pop();
      ++n;
    }
    release();
    return n;
  }

  /// True if a record is available (refreshes the cached tail), or if the ring is corrupt (peek
  /// says so), so that no waiter sleeps on a broken ring.
  [[nodiscard]] bool has_data() noexcept {
    // error_: peek() reports it; a waiter must not sleep on a broken ring.
    if (head_ != tail_cache_ || error_) return true;
    return refresh_tail();
  }

  /// Blocks per the ring's NotifyMode until a record is available or `timeout` passes (nullopt:
  /// forever). Returns true if data is available. Uses the sleeping-flag handshake; spurious
  /// wakeups are handled inside.
  [[nodiscard]] bool wait(std::optional<std::chrono::nanoseconds> timeout = std::nullopt) noexcept;

  /// For event loops that block on the eventfd themselves (io_uring, epoll): publishes the
  /// sleeping flag and re-checks. Returns true if the caller may now block on the eventfd; false
  /// if data arrived meanwhile (the flag is cleared again: drain first). Always false in kSpin and
  /// kPoll, whose producers never signal.
  [[nodiscard]] bool prepare_sleep() noexcept;
  /// Clears the sleeping flag after a wakeup (or before giving up on sleeping).
  void finish_sleep() noexcept;

  [[nodiscard]] const Error* error() const noexcept { return error_ ? &*error_ : nullptr; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  /// The notify mode the header named when this handle attached.
  [[nodiscard]] NotifyMode mode() const noexcept { return mode_; }
  [[nodiscard]] RingHeader& header() const noexcept { return *header_; }

 private:
  PopStatus fail(const char* what) noexcept;
  /// has_data() once the cached tail is used up: reads and validates the shared tail.
  bool refresh_tail() noexcept;
  /// peek() for padding, corruption and the sticky error: validates everything again.
  PopStatus peek_slow(RecordView& out) noexcept;

  RingHeader* header_ = nullptr;
  const std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::uint64_t head_ = 0;           // local head, ahead of the published one during a batch
  std::uint64_t tail_cache_ = 0;     // last tail read from the producer's line
  std::uint64_t released_head_ = 0;  // last head stored to the header (never re-read from it)
  std::uint64_t peeked_next_ = 0;    // head after the record returned by the last peek
  std::uint64_t popped_ = 0;         // records popped; stored to records_popped by release()
  int notify_fd_ = -1;
  NotifyMode mode_ = NotifyMode::kEventfd;
  std::chrono::microseconds poll_interval_{100};
  std::optional<Error> error_;
};

}  // namespace floe::ipc
