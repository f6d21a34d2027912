// Seqlock: one writer, any number of lock-free readers, for data too big for one atomic.
//
// The orderings are exactly the seed document's:
//   writer: relaxed store seq+1 (odd); release fence; write the data; release store seq+2 (even)
//   reader: acquire load seq (odd: retry); read the data; acquire fence; relaxed reload seq
//           (changed: retry)
// The data itself is copied with relaxed atomic byte/word accesses (atomic_ref), so a racing read
// is a defined torn copy that the sequence check then discards, not a data race.
//
// A writer that dies mid-write leaves the sequence odd forever; readers give up after a bounded
// number of attempts and report ReadResult::kWriterStuck instead of spinning forever.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "floe/ipc/platform.hpp"

namespace floe::ipc {

enum class SeqlockRead : std::uint8_t {
  kOk,           // a consistent copy was taken
  kWriterStuck,  // the sequence stayed odd for every attempt: writer mid-write or dead
  kContended,    // the sequence kept changing for every attempt (writer very busy)
};

inline constexpr unsigned kSeqlockDefaultAttempts = 10'000;

/// Copies `n` bytes from shared memory that may be written concurrently, word by word with relaxed
/// atomic loads. `src` and `dst` must be 8-byte aligned; `n` a multiple of 8.
inline void seqlock_copy_out(void* dst, const void* src, std::size_t n) noexcept {
  auto* d = static_cast<std::uint64_t*>(dst);
  auto* s = static_cast<std::uint64_t*>(const_cast<void*>(src));
  for (std::size_t i = 0; i < n / 8; ++i) d[i] = std::atomic_ref<std::uint64_t>(s[i]).load(std::memory_order_relaxed);
}
/// The writer's half of seqlock_copy_out.
inline void seqlock_copy_in(void* dst, const void* src, std::size_t n) noexcept {
  auto* d = static_cast<std::uint64_t*>(dst);
  auto* s = static_cast<const std::uint64_t*>(src);
  for (std::size_t i = 0; i < n / 8; ++i) std::atomic_ref<std::uint64_t>(d[i]).store(s[i], std::memory_order_relaxed);
}

/// The sequence word alone, for data laid out elsewhere (blob areas in shared memory).
/// Shared-memory data: standard layout.
struct SeqlockWord {
  std::atomic<std::uint32_t> seq{0};

  /// Writer only. Starts a write: the sequence becomes odd.
  void write_begin() noexcept {
    const std::uint32_t s = seq.load(std::memory_order_relaxed);
    seq.store(s + 1, std::memory_order_relaxed);
    // SYNC(seqlock-begin): the odd sequence is ordered before every data store below; pairs with
    // the reader's acquire fence before its re-check.
    std::atomic_thread_fence(std::memory_order_release);
  }
  /// Writer only. Ends a write: the sequence becomes even again.
  void write_end() noexcept {
    const std::uint32_t s = seq.load(std::memory_order_relaxed);
    // SYNC(seqlock-end): publishes the data stores; pairs with the reader's acquire load.
    seq.store(s + 1, std::memory_order_release);
  }

  /// Any thread. `read()` copies the data; returns kOk once a copy was taken between two equal
  /// even sequence values. At most `max_attempts` looks at the sequence, of which at most
  /// `max_copies` call `read_fn` (a big copy that a writer spoils every time costs that many
  /// copies, not `max_attempts`).
  template <typename ReadFn>
  [[nodiscard]] SeqlockRead read(ReadFn&& read_fn, unsigned max_attempts = kSeqlockDefaultAttempts,
                                 unsigned max_copies = kSeqlockDefaultAttempts) const noexcept {
    bool saw_odd_always = true;
    unsigned copies = 0;
    for (unsigned attempt = 0; attempt < max_attempts && copies < max_copies; ++attempt) {
      // SYNC(seqlock-end): acquire pairs with the writer's release store of the even value.
      const std::uint32_t before = seq.load(std::memory_order_acquire);
      if (before & 1U) {
        cpu_relax();
        continue;
      }
      saw_odd_always = false;
      ++copies;
      read_fn();
      // SYNC(seqlock-begin): the data loads above are ordered before the re-check below.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq.load(std::memory_order_relaxed) == before) return SeqlockRead::kOk;
      cpu_relax();
    }
    return saw_odd_always ? SeqlockRead::kWriterStuck : SeqlockRead::kContended;
  }

  /// Any thread. True if a write is in progress (or a writer died mid-write).
  [[nodiscard]] bool write_in_progress() const noexcept {
    return (seq.load(std::memory_order_acquire) & 1U) != 0;
  }
};
static_assert(std::is_standard_layout_v<SeqlockWord>);

/// A value of trivially copyable type T guarded by a seqlock. Fits in shared memory.
template <typename T>
class Seqlock {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  /// Writer only (one writer at a time).
  void store(const T& value) noexcept {
    word_.write_begin();
    std::uint64_t buf[kWords]{};
    std::memcpy(buf, &value, sizeof(T));
    seqlock_copy_in(storage_, buf, sizeof(storage_));
    word_.write_end();
  }
  /// Any thread. On kOk, `out` holds a consistent copy; otherwise `out` is unspecified.
  [[nodiscard]] SeqlockRead load(T& out, unsigned max_attempts = kSeqlockDefaultAttempts) const noexcept {
    std::uint64_t buf[kWords];
    const SeqlockRead r = word_.read([&] { seqlock_copy_out(buf, storage_, sizeof(storage_)); }, max_attempts);
    if (r == SeqlockRead::kOk) std::memcpy(&out, buf, sizeof(T));
    return r;
  }
  [[nodiscard]] const SeqlockWord& word() const noexcept { return word_; }
  [[nodiscard]] SeqlockWord& word() noexcept { return word_; }

 private:
  static constexpr std::size_t kWords = (sizeof(T) + 7) / 8;
  SeqlockWord word_;
  std::uint64_t storage_[kWords]{};
};

}  // namespace floe::ipc
