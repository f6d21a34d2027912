#include "futex_bridge.hpp"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <string_view>
#include <system_error>

#include "floe/ipc/notify.hpp"

namespace floe::sdk::detail {
namespace {

const std::uint32_t* address(const std::atomic<std::uint32_t>& word) noexcept {
  return reinterpret_cast<const std::uint32_t*>(&word);
}

/// futex_waitv(2); glibc has no wrapper. No timeout: the control word ends every wait that
/// must end. FUTEX_32 without FUTEX_PRIVATE_FLAG: the ring words live in memory shared with the
/// core, whose FUTEX_WAKE is the shared kind.
long waitv(::futex_waitv* waiters, unsigned count) noexcept {
  return ::syscall(SYS_futex_waitv, waiters, count, 0, nullptr, CLOCK_MONOTONIC);
}

bool probe_futex_waitv() noexcept {
  if (const char* off = std::getenv("FLOE_SDK_NO_FUTEX_WAITV"); off != nullptr && std::string_view(off) == "1") {
    spdlog::info("floe-sdk: FLOE_SDK_NO_FUTEX_WAITV=1: futex-mode rings get a waiting thread each");
    return false;
  }
  // An empty vector is EINVAL where the call exists and ENOSYS where it does not.
  if (waitv(nullptr, 0) == 0 || errno != ENOSYS) return true;
  spdlog::warn("floe-sdk: futex_waitv is not available (Linux < 5.16?): futex-mode rings get a waiting thread each");
  return false;
}

// How long a fallback bridge (one word, FUTEX_WAIT) sleeps before it looks at its control word:
// it cannot wait on both, so a remove() or stop() may take this long to be noticed (harmless:
// remove() does not wait for the thread, see FutexBridge::run).
constexpr auto kFallbackRecheck = std::chrono::milliseconds(50);

}  // namespace

std::size_t FutexBridge::slots() noexcept {
  static const bool has_waitv = probe_futex_waitv();
  return has_waitv ? FUTEX_WAITV_MAX - 1 : 1;
}

FutexBridge::FutexBridge() {
  entries_.reserve(slots());
  thread_ = std::thread([this] { run(); });
}

FutexBridge::~FutexBridge() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    kick_locked();
  }
  thread_.join();
}

bool FutexBridge::add(const std::atomic<std::uint32_t>& word, int eventfd) {
  std::lock_guard lock(mu_);
  if (entries_.size() >= slots()) return false;
  // SYNC(futex-gen): acquire pairs with the producer's release bump in RingProducer::wake_consumer.
  // A bump after this load makes the thread's wait return (or not start) and signal.
  entries_.push_back({&word, word.load(std::memory_order_acquire), eventfd});
  kick_locked();
  return true;
}

void FutexBridge::remove(const std::atomic<std::uint32_t>& word) noexcept {
  std::lock_guard lock(mu_);
  const auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.word == &word; });
  if (it == entries_.end()) return;
  entries_.erase(it);
  kick_locked();
  // A fallback bridge may be in FUTEX_WAIT on this very word: let it go now rather than at its
  // next recheck. Only this process waits on a tx ring's word, so the extra wake disturbs no one.
  if (slots() == 1) (void)ipc::futex_wake(address(word), INT32_MAX);
}

std::size_t FutexBridge::size() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

void FutexBridge::kick_locked() noexcept {
  control_.fetch_add(1, std::memory_order_release);
  (void)ipc::futex_wake(address(control_), 1);
}

void FutexBridge::run() noexcept {
  // Named for top and /proc (the integration test counts the bridges by this name).
  (void)::pthread_setname_np(::pthread_self(), "floe-sdk-futex");
  // The wait runs without mu_ on a copy of the addresses; everything that touches a word's value
  // or an eventfd afterwards happens under mu_ on entries_ as it is then. So a remove() need not
  // wait for the thread: a wait still naming a removed word at most returns early (the control
  // word was bumped under mu_ before the copy could go stale), and the kernel reads a futex_waitv
  // word only when the call starts (EFAULT if it is gone by then, which is just another wakeup).
  std::vector<::futex_waitv> waiters;
  waiters.reserve(FUTEX_WAITV_MAX);
  const bool vectored = slots() > 1;
  bool warned = false;
  std::unique_lock lock(mu_);
  while (!stop_) {
    const std::uint32_t control_seen = control_.load(std::memory_order_acquire);
    waiters.clear();
    waiters.push_back({.val = control_seen, .uaddr = reinterpret_cast<std::uint64_t>(address(control_)),
                       .flags = FUTEX_32, .__reserved = 0});
    for (const Entry& e : entries_) {
      waiters.push_back({.val = e.seen, .uaddr = reinterpret_cast<std::uint64_t>(address(*e.word)),
                         .flags = FUTEX_32, .__reserved = 0});
    }
    lock.unlock();
    long woken = -1;  // futex_waitv: the index of the word whose FUTEX_WAKE ended the wait
    if (vectored) {
      woken = waitv(waiters.data(), static_cast<unsigned>(waiters.size()));
      if (woken < 0 && !warned && errno != EAGAIN && errno != EINTR && errno != EFAULT) {
        // Any other error would make this a busy loop: say so once (it has never been seen).
        spdlog::error("floe-sdk: futex_waitv failed: {}", std::strerror(errno));
        warned = true;
      }
    } else if (waiters.size() == 1) {
      ipc::futex_wait(address(control_), control_seen, std::nullopt);
    } else {
      ipc::futex_wait(reinterpret_cast<const std::uint32_t*>(waiters[1].uaddr), static_cast<std::uint32_t>(waiters[1].val),
                      kFallbackRecheck);
    }
    lock.lock();
    if (woken > 0) {
      const std::uint64_t addr = waiters[static_cast<std::size_t>(woken)].uaddr;
      if (std::none_of(entries_.begin(), entries_.end(),
                       [&](const Entry& e) { return reinterpret_cast<std::uint64_t>(e.word) == addr; })) {
        // The word left this bridge while we waited on it, and the core's FUTEX_WAKE (count 1)
        // picked this stale wait. If the same ring is being watched elsewhere already (a re-grant of
        // the same region), that waiter missed it: pass the wake on. Spurious for anyone else.
        (void)ipc::futex_wake(reinterpret_cast<const std::uint32_t*>(addr), INT32_MAX);
      }
    }
    for (Entry& e : entries_) {
      // SYNC(futex-gen): acquire pairs with the producer's release bump in RingProducer::wake_consumer.
      const std::uint32_t now = e.word->load(std::memory_order_acquire);
      if (now == e.seen) continue;
      e.seen = now;
      ipc::eventfd_signal(e.eventfd);
    }
  }
}

FutexBridge* FutexBridges::add(const std::atomic<std::uint32_t>& word, int eventfd) noexcept {
  for (auto& b : bridges_) {
    if (b->add(word, eventfd)) return b.get();
  }
  try {
    bridges_.push_back(std::make_unique<FutexBridge>());
  } catch (const std::exception& e) {
    spdlog::error("floe-sdk: cannot start a futex bridge thread: {}", e.what());
    return nullptr;
  }
  FutexBridge* b = bridges_.back().get();
  return b->add(word, eventfd) ? b : nullptr;
}

}  // namespace floe::sdk::detail
