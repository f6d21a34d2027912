// Turns FUTEX_WAKEs on the futex words of tx rings in NotifyMode::kFutex into eventfd signals the
// provider's epoll set sees, without a thread per device: one thread waits on up to 127 words at
// once with futex_waitv (Linux >= 5.16), plus one control word that add/remove/stop bump to make
// it re-read its set. Where futex_waitv is missing (ENOSYS), each bridge holds a single word and
// waits with FUTEX_WAIT, the core's scheme. Internal to the SDK (provider.cpp).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace floe::sdk::detail {

/// One waiting thread and the words it watches. add/remove/size: any thread.
class FutexBridge {
 public:
  /// Words one bridge can watch: 127 (futex_waitv's 128 less the control word), or 1 without
  /// futex_waitv. Probed once per process; FLOE_SDK_NO_FUTEX_WAITV=1 forces the fallback (tests).
  [[nodiscard]] static std::size_t slots() noexcept;

  /// Starts the thread. Throws std::system_error if it cannot.
  FutexBridge();
  /// Stops and joins the thread.
  ~FutexBridge();
  FutexBridge(const FutexBridge&) = delete;
  FutexBridge& operator=(const FutexBridge&) = delete;

  /// Watches `word` (a ring's futex_word, in a mapping that outlives the matching remove()):
  /// every change of its value after this call signals `eventfd` (at least once per change).
  /// False if the bridge is full.
  [[nodiscard]] bool add(const std::atomic<std::uint32_t>& word, int eventfd);
  /// Stops watching `word`. Once it returns the thread neither reads `word` nor writes its
  /// eventfd any more, so the caller may unmap the one and close the other.
  void remove(const std::atomic<std::uint32_t>& word) noexcept;
  [[nodiscard]] std::size_t size() const;

 private:
  struct Entry {
    const std::atomic<std::uint32_t>* word;
    std::uint32_t seen;  // the value last signalled for (or found at add)
    int eventfd;
  };
  void run() noexcept;
  /// Bumps the control word and wakes the thread so that it re-reads entries_. Caller holds mu_.
  void kick_locked() noexcept;

  mutable std::mutex mu_;
  std::vector<Entry> entries_;  // mu_
  bool stop_ = false;           // mu_
  std::atomic<std::uint32_t> control_{0};
  std::thread thread_;
};

/// The bridges of one provider: add() fills the first bridge with a free slot and starts another
/// when all are full. Provider thread only.
class FutexBridges {
 public:
  /// The bridge now watching `word`, or nullptr if no thread could be started (logged).
  [[nodiscard]] FutexBridge* add(const std::atomic<std::uint32_t>& word, int eventfd) noexcept;
  /// Threads started (for tests and logs).
  [[nodiscard]] std::size_t threads() const noexcept { return bridges_.size(); }

 private:
  std::vector<std::unique_ptr<FutexBridge>> bridges_;
};

}  // namespace floe::sdk::detail
