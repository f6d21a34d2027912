// A doorbell: one consumer thread's sleeping flag and eventfd, shared by every ring it consumes.
//
// With a flag per ring, a producer signals whenever that ring's consumer last went idle on it,
// even while the consumer's thread is busy with another ring: one eventfd write (and one wakeup
// to handle) per request when requests spread over many devices. A doorbell moves the flag to the
// consumer thread, which raises it only when it is really about to block, and tells it which
// rings to look at with one pending bit per ring ("slot"):
//
//   producer (any thread):  publish the ring's tail; fence; set the slot's bit (skipped if set);
//                           set the word's summary bit (skipped if set); fence; if the sleeping
//                           flag is up, exchange it to 0 and, if it was 1, write the eventfd.
//   consumer (one thread):  take(): exchange the summary words and the words they name to 0,
//                           fence, then visit each slot whose bit was set; prepare_sleep(): raise
//                           the flag, fence, and block only if no summary bit is set.
//
// Either the consumer sees a bit or the producer sees the flag (the same handshake as a ring's
// own flag, notify.hpp), so no wakeup is lost and an awake consumer costs producers no syscall.
//
// Everything here lives in shared memory a peer can write: the consumer ignores bits beyond the
// slot count it attached with, and a peer that plays with the flag can only wake or fail to wake
// its own consumer thread (one doorbell per consumer thread and peer, never shared between peers).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"

namespace floe::ipc {

inline constexpr std::uint32_t kDoorbellMagic = 0x4C4C4542;  // "BELL"
inline constexpr std::uint32_t kDoorbellLayoutVersion = 1;
inline constexpr std::uint32_t kDoorbellMaxSlots = 65536;

/// The shared part of a doorbell; the summary and pending words follow it (doorbell_footprint).
struct DoorbellHeader {
  // Line 0: written once by doorbell_init, read-only afterwards.
  alignas(kCacheLine) std::uint32_t magic;
  std::uint32_t layout_version;
  std::uint32_t slots;          // pending bits; a multiple of 64, <= kDoorbellMaxSlots
  std::uint32_t summary_words;  // one summary bit per pending word
  std::uint64_t summary_offset;  // from this header; the pending words follow the summary's lines
  std::uint64_t pending_offset;

  // Line 1: the wake handshake.
  alignas(kCacheLine) std::atomic<std::uint32_t> sleeping;

  // Line 2: statistics for inspectors (relaxed; nobody waits on them).
  alignas(kCacheLine) std::atomic<std::uint64_t> signals;  // eventfd writes made by producers
  std::atomic<std::uint64_t> wakeups;                      // times the consumer returned from sleeping
  std::atomic<std::uint64_t> takes;                        // slots the consumer was told to look at
};
static_assert(std::is_standard_layout_v<DoorbellHeader>);
static_assert(sizeof(DoorbellHeader) == 3 * kCacheLine);

/// Bytes a doorbell of `slots` slots (rounded up to 64) needs, a multiple of kCacheLine.
[[nodiscard]] std::size_t doorbell_footprint(std::uint32_t slots) noexcept;
/// Initialises a doorbell in `memory` (64-byte aligned, >= doorbell_footprint(slots) bytes).
[[nodiscard]] Status doorbell_init(std::span<std::byte> memory, std::uint32_t slots);

/// A process-local handle on a doorbell, for producers and for its one consumer. The slot count
/// and the offsets are read and checked once, at attach: a peer rewriting the header later
/// changes nothing here. Producers may share one handle across threads; the consumer's calls
/// (take, prepare_sleep, finish_sleep) belong to one thread.
class Doorbell {
 public:
  Doorbell() = default;
  /// Validates magic, version, slot count and offsets against `memory`.
  [[nodiscard]] static Result<Doorbell> attach(std::span<std::byte> memory);

  /// Producer: call after publishing a ring's tail. Marks `slot` pending and writes `eventfd` if
  /// the consumer sleeps. Never blocks; a slot out of range is ignored.
  void ring(std::uint32_t slot, int eventfd) noexcept;

  /// Consumer: clears every pending bit and calls fn(slot) for each slot that was set, in slot
  /// order. Returns how many were set.
  template <typename Fn>
  std::size_t take(Fn&& fn) {
    taken_.clear();
    for (std::uint32_t s = 0; s < summary_words_; ++s) {
      if (summary_[s].load(std::memory_order_relaxed) == 0) continue;
      // SYNC(bell-pending): acquire pairs with the producers' release fetch_or of the bits.
      std::uint64_t sum = summary_[s].exchange(0, std::memory_order_acquire);
      while (sum != 0) {
        const std::uint32_t w = s * 64 + static_cast<std::uint32_t>(__builtin_ctzll(sum));
        sum &= sum - 1;
        if (w >= words_) continue;
        // Release too: pairs with the producers' acq_rel fetch_or (see ring()).
        const std::uint64_t bits = pending_[w].exchange(0, std::memory_order_acq_rel);
        if (bits != 0) taken_.push_back({w, bits});
      }
    }
    // SYNC(bell-take): a producer that found its bit already set skipped the store; this fence,
    // paired with the one before its bit test, makes its tail visible to our ring reads.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::size_t n = 0;
    for (auto [w, bits] : taken_) {
      while (bits != 0) {
        fn(w * 64 + static_cast<std::uint32_t>(__builtin_ctzll(bits)));
        bits &= bits - 1;
        ++n;
      }
    }
    if (n != 0) header_->takes.fetch_add(n, std::memory_order_relaxed);
    return n;
  }

  /// Consumer: raises the sleeping flag and re-checks. True: block on the eventfd now. False: a
  /// slot became pending meanwhile (the flag is down again): take() first.
  [[nodiscard]] bool prepare_sleep() noexcept;
  /// Consumer: lowers the flag after a wakeup (the producer that signalled lowered it already;
  /// a timeout or another fd did not).
  void finish_sleep() noexcept;
  /// True if any slot is pending (a look, nothing cleared).
  [[nodiscard]] bool any_pending() const noexcept;
  /// How many slots are pending now (for inspectors; a look, nothing cleared).
  [[nodiscard]] std::uint32_t pending_count() const noexcept;

  [[nodiscard]] bool valid() const noexcept { return header_ != nullptr; }
  [[nodiscard]] std::uint32_t slots() const noexcept { return words_ * 64; }
  [[nodiscard]] DoorbellHeader& header() const noexcept { return *header_; }

 private:
  struct Taken {
    std::uint32_t word;
    std::uint64_t bits;
  };
  DoorbellHeader* header_ = nullptr;
  std::atomic<std::uint64_t>* summary_ = nullptr;
  std::atomic<std::uint64_t>* pending_ = nullptr;
  std::uint32_t words_ = 0;
  std::uint32_t summary_words_ = 0;
  std::vector<Taken> taken_;  // the consumer's scratch
};

/// A region of kind RegionKind::kDoorbells: `count` doorbells of `slots` slots each, back to back
/// from kRegionPayloadOffset (management.proto, DoorbellGrant).
[[nodiscard]] std::size_t doorbell_region_size(std::uint32_t count, std::uint32_t slots) noexcept;
/// Creator: initialises every doorbell of a fresh region of at least doorbell_region_size bytes.
[[nodiscard]] Status doorbell_region_init(std::span<std::byte> region, std::uint32_t count, std::uint32_t slots);
/// Both sides: attaches the `count` doorbells, each validated (Doorbell::attach).
[[nodiscard]] Result<std::vector<Doorbell>> doorbell_region_attach(std::span<std::byte> region, std::uint32_t count,
                                                                   std::uint32_t slots);

}  // namespace floe::ipc
