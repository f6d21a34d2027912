// EventLoop on epoll: level-triggered watches, one timerfd per timer, an eventfd for stop()/wake().
//
// epoll_event.data carries the WatchId, never a pointer: an event for a watch that was cancelled
// earlier in the same batch finds no live watch and is dropped. A cancelled watch's object moves
// to a graveyard emptied after the batch, so a callback may cancel itself while it runs.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <limits>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "event_loop_impl.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/platform.hpp"

namespace floe::ipc::detail {
namespace {

// data.u64 of the internal wake eventfd; user WatchIds start at 1.
constexpr WatchId kWakeId = 0;
constexpr int kMaxEvents = 64;

enum class Kind : std::uint8_t { kReadable, kEventfd, kTimer };

struct Watch {
  WatchId id = 0;
  Kind kind = Kind::kReadable;
  int fd = -1;     // the watched fd (the timerfd for timers)
  Fd owned;        // timers own their timerfd
  bool repeat = false;
  std::function<void()> on_ready;
  std::function<void(std::uint64_t)> on_value;
};

class EpollLoop final : public EventLoop {
 public:
  EpollLoop(Fd epoll, Fd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}

  ~EpollLoop() override {
    // Closing the epoll fd drops every registration; timerfds close with their watches.
    watches_.clear();
    graveyard_.clear();
  }

  LoopBackend backend() const noexcept override { return LoopBackend::kEpoll; }

  Result<WatchId> watch_readable(int fd, std::function<void()> callback) override {
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kReadable;
    w->fd = fd;
    w->on_ready = std::move(callback);
    return add(std::move(w));
  }

  Result<WatchId> watch_eventfd(int fd, std::function<void(std::uint64_t)> callback) override {
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kEventfd;
    w->fd = fd;
    w->on_value = std::move(callback);
    return add(std::move(w));
  }

  Result<WatchId> add_timer(std::chrono::nanoseconds delay, bool repeat,
                            std::function<void()> callback) override {
    Fd tfd(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!tfd) return sys_error("timerfd_create");
    // An all-zero it_value disarms a timerfd, so "now" is one nanosecond.
    const auto ns = std::max<std::int64_t>(clamp_delay(delay).count(), 1);
    const timespec period{.tv_sec = static_cast<time_t>(ns / 1'000'000'000),
                          .tv_nsec = static_cast<long>(ns % 1'000'000'000)};
    const itimerspec spec{.it_interval = repeat ? period : timespec{}, .it_value = period};
    if (::timerfd_settime(tfd.get(), 0, &spec, nullptr) < 0) return sys_error("timerfd_settime");
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kTimer;
    w->fd = tfd.get();
    w->owned = std::move(tfd);
    w->repeat = repeat;
    w->on_ready = std::move(callback);
    return add(std::move(w));
  }

  void cancel(WatchId id) noexcept override {
    const auto it = watches_.find(id);
    if (it == watches_.end()) return;
    // EBADF/ENOENT: the user closed the fd first, which already removed the registration.
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd, nullptr);
    // The callback may be the one running right now: destroy it after the batch.
    graveyard_.push_back(std::move(it->second));
    watches_.erase(it);
    if (!dispatching_) graveyard_.clear();
  }

  Status run() override {
    // exchange(false): a stop() that arrives before run() still ends the next run().
    // SYNC(stop): acquire pairs with the release in stop().
    while (!stop_.exchange(false, std::memory_order_acquire)) {
      FLOE_TRY(run_once(std::nullopt));
    }
    return {};
  }

  Result<std::size_t> run_once(std::optional<std::chrono::nanoseconds> timeout) override {
    FLOE_ASSERT(!dispatching_);  // run_once must not be called from a callback
    int timeout_ms = -1;
    if (timeout) {
      // Round up: waking before the deadline would make callers spin.
      const auto ns = clamp_delay(*timeout).count();
      const auto ms = (ns + 999'999) / 1'000'000;
      timeout_ms = static_cast<int>(std::min<std::int64_t>(ms, std::numeric_limits<int>::max()));
    }
    std::array<epoll_event, kMaxEvents> events{};
    const int n = ::epoll_pwait(epoll_.get(), events.data(), kMaxEvents, timeout_ms, nullptr);
    if (n < 0) {
      if (errno == EINTR) return std::size_t{0};
      return sys_error("epoll_pwait");
    }
    std::size_t ran = 0;
    dispatching_ = true;
    for (int i = 0; i < n; ++i) ran += dispatch(events[static_cast<std::size_t>(i)].data.u64);
    dispatching_ = false;
    graveyard_.clear();
    return ran;
  }

  void stop() noexcept override {
    // SYNC(stop): release pairs with the acquire exchange in run().
    stop_.store(true, std::memory_order_release);
    wake_eventfd(wake_.get());
  }

  void wake() noexcept override { wake_eventfd(wake_.get()); }

  Status register_wake() {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeId;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) < 0)
      return sys_error("epoll_ctl(ADD)", "wake eventfd");
    return {};
  }

 private:
  Result<WatchId> add(std::unique_ptr<Watch> w) {
    w->id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = w->id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, w->fd, &ev) < 0) {
      if (errno != EEXIST) return sys_error("epoll_ctl(ADD)");
      // The fd is already watched: epoll keys registrations by (file, fd), so a second watch of
      // the same fd (which io_uring allows) registers a private duplicate.
      w->owned.reset(::fcntl(w->fd, F_DUPFD_CLOEXEC, 0));
      if (!w->owned) return sys_error("fcntl(F_DUPFD_CLOEXEC)");
      w->fd = w->owned.get();
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, w->fd, &ev) < 0) return sys_error("epoll_ctl(ADD)");
    }
    const WatchId id = w->id;
    watches_.emplace(id, std::move(w));
    return id;
  }

  // Returns 1 if a user callback ran.
  std::size_t dispatch(WatchId id) {
    if (id == kWakeId) {
      std::uint64_t drained = 0;
      [[maybe_unused]] const ssize_t r = ::read(wake_.get(), &drained, sizeof drained);
      return 0;
    }
    const auto it = watches_.find(id);
    if (it == watches_.end()) return 0;  // cancelled earlier in this batch
    Watch& w = *it->second;
    switch (w.kind) {
      case Kind::kReadable:
        w.on_ready();
        return 1;
      case Kind::kEventfd: {
        auto value = eventfd_drain(w.fd);
        if (!value) {
          // A signal pipe whose writer is gone reads as ready forever: stop watching it.
          spdlog::debug("event loop: watch {} (fd {}): {}; watch dropped", id, w.fd, value.error().to_string());
          cancel(id);
          return 0;
        }
        // 0: another reader took the counter between epoll_wait and here.
        if (*value == 0) return 0;
        w.on_value(*value);
        return 1;
      }
      case Kind::kTimer: {
        std::uint64_t expirations = 0;
        if (::read(w.fd, &expirations, sizeof expirations) != static_cast<ssize_t>(sizeof expirations))
          return 0;
        // Missed periods (expirations > 1) coalesce into one call, like a late io_uring timeout.
        const bool once = !w.repeat;
        w.on_ready();
        if (once) cancel(id);
        return 1;
      }
    }
    return 0;
  }

  Fd epoll_;
  Fd wake_;
  std::atomic<bool> stop_{false};
  WatchId next_id_ = 1;
  bool dispatching_ = false;
  std::unordered_map<WatchId, std::unique_ptr<Watch>> watches_;
  std::vector<std::unique_ptr<Watch>> graveyard_;
};

}  // namespace

Result<std::unique_ptr<EventLoop>> make_epoll_loop(const LoopOptions& /*options*/) {
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return sys_error("epoll_create1");
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return sys_error("eventfd", "wake eventfd");
  auto loop = std::make_unique<EpollLoop>(std::move(epoll), std::move(wake));
  FLOE_TRY(loop->register_wake());
  return std::unique_ptr<EventLoop>(std::move(loop));
}

}  // namespace floe::ipc::detail
