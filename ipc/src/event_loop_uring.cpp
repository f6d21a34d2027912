// EventLoop on io_uring (liburing 2.3 API).
//
// user_data = WatchId << 3 | tag. Ids are never reused, so the id doubles as a generation: a
// completion whose watch was cancelled finds it dead (or gone) and is dropped, never dispatched.
// Tags name the op a completion belongs to (poll, read, timeout); kTagControl marks the
// completions of our own cancel/remove requests, which carry nothing to act on.
//
// Every op a watch has in the kernel sets one bit in Watch::armed, cleared by that op's final
// completion (one without IORING_CQE_F_MORE). A cancelled watch stays in watches_, with its read
// buffer and timespec, until armed is zero: the kernel may still write into it until then.
//
// Readable watches use a one-shot POLL_ADD re-armed after each callback, not a multishot poll: a
// multishot poll posts a completion per wakeup (edge-triggered), while the API promises
// level-triggered behaviour ("called again until consumed"); a fresh poll checks readiness when
// armed. The re-arm SQE rides along with the next wait, so the steady state is still one
// io_uring_enter per loop iteration.
//
// Eventfd watches read 8 bytes with IORING_OP_READ into the watch. On a blocking eventfd the
// kernel parks the read on an internal poll; on an O_NONBLOCK one (an eventfd or a signal pipe)
// the read would complete -EAGAIN at once, so such a watch submits a one-shot POLL_ADD and reads
// the descriptor itself, in the loop's thread, when the poll completes. Not a READ linked to the
// POLL (IOSQE_IO_LINK): the kernel looks a linked request's fd up only when it issues it, after
// the poll fired, and by then the owner may have cancelled the watch and closed the fd, whose
// number a new file can take: that READ would eat the new file's signal. A read of our own runs
// while the watch is alive, and the owner closes only after cancel() (both in this thread).
//
// Timers are absolute CLOCK_MONOTONIC IORING_OP_TIMEOUTs (liburing 2.3 has no multishot timeout).
// A repeating timer's next deadline is the previous deadline plus the period, not "now plus the
// period", so lateness does not accumulate (no drift); periods missed entirely while the loop was
// busy are skipped and coalesce into one call, as a periodic timerfd does in the epoll backend.
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "event_loop_impl.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/platform.hpp"

namespace floe::ipc::detail {
namespace {

enum Tag : std::uint64_t { kTagPoll = 1, kTagRead = 2, kTagTimeout = 3, kTagControl = 4 };
constexpr unsigned kTagBits = 3;
constexpr std::uint64_t kTagMask = (1u << kTagBits) - 1;

constexpr std::uint64_t encode(WatchId id, Tag tag) noexcept { return id << kTagBits | tag; }
constexpr std::uint8_t bit(std::uint64_t tag) noexcept { return static_cast<std::uint8_t>(1u << tag); }

// The internal wake eventfd's watch; user WatchIds start at 1.
constexpr WatchId kWakeId = 0;
// How long the destructor waits for the kernel to return cancelled ops before leaking their memory.
constexpr auto kDrainTimeout = std::chrono::seconds(5);

enum class Kind : std::uint8_t { kReadable, kEventfd, kTimer, kWake };

struct Watch {
  WatchId id = 0;
  Kind kind = Kind::kReadable;
  int fd = -1;
  bool alive = true;
  bool poll_before_read = false;  // O_NONBLOCK eventfd: POLL_ADD, then read() here (not a READ op)
  bool repeat = false;
  std::uint8_t armed = 0;         // bit(tag) per op whose final completion has not arrived
  std::array<std::uint64_t, 8> value{};  // IORING_OP_READ target: an eventfd's counter, or signals of a pipe
  __kernel_timespec deadline{};   // IORING_OP_TIMEOUT target, absolute CLOCK_MONOTONIC
  std::chrono::nanoseconds period{};
  std::function<void()> on_ready;
  std::function<void(std::uint64_t)> on_value;
};

struct Completion {
  std::uint64_t user_data;
  std::int32_t res;
  std::uint32_t flags;
};

std::chrono::nanoseconds monotonic_now() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

__kernel_timespec to_kernel_timespec(std::chrono::nanoseconds ns) noexcept {
  return {.tv_sec = ns.count() / 1'000'000'000, .tv_nsec = ns.count() % 1'000'000'000};
}

std::chrono::nanoseconds from_kernel_timespec(const __kernel_timespec& ts) noexcept {
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

class UringLoop final : public EventLoop {
 public:
  explicit UringLoop(Fd wake) : wake_(std::move(wake)) {}

  Status init(unsigned depth) {
    io_uring_params params{};
    // COOP_TASKRUN: completions are posted when we enter the kernel anyway, no IPI needed;
    // TASKRUN_FLAG tells run_once(0) when it must enter to collect them.
    params.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    int r = io_uring_queue_init_params(depth, &ring_, &params);
    if (r == -EINVAL) {  // kernel older than 5.19
      params = {};
      r = io_uring_queue_init_params(depth, &ring_, &params);
    }
    if (r < 0) return sys_error("io_uring_queue_init", -r, "");
    ring_ok_ = true;
    if (!(params.features & IORING_FEAT_NODROP))
      return logic_error("io_uring_queue_init", "kernel lacks IORING_FEAT_NODROP (needs Linux 5.5+)");
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (probe == nullptr) return logic_error("io_uring_get_probe_ring", "kernel cannot probe opcodes");
    const char* missing = nullptr;
    for (const auto& [op, name] : {std::pair{IORING_OP_POLL_ADD, "POLL_ADD"},
                                   std::pair{IORING_OP_POLL_REMOVE, "POLL_REMOVE"},
                                   std::pair{IORING_OP_READ, "READ"},
                                   std::pair{IORING_OP_TIMEOUT, "TIMEOUT"},
                                   std::pair{IORING_OP_TIMEOUT_REMOVE, "TIMEOUT_REMOVE"},
                                   std::pair{IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}}) {
      if (!io_uring_opcode_supported(probe, op)) missing = name;
    }
    io_uring_free_probe(probe);
    if (missing != nullptr)
      return logic_error("io_uring_get_probe_ring", std::string("kernel lacks IORING_OP_") + missing);

    auto w = std::make_unique<Watch>();
    w->id = kWakeId;
    w->kind = Kind::kWake;
    w->fd = wake_.get();
    w->poll_before_read = true;  // the wake eventfd is O_NONBLOCK so stop() never blocks
    Watch& ref = *w;
    watches_.emplace(kWakeId, std::move(w));
    if (!arm(ref)) return logic_error("io_uring_get_sqe", "submission queue full");
    return {};
  }

  ~UringLoop() override {
    if (!ring_ok_) return;
    // Queued ops may name fds the owner has closed (and the numbers reused) by now.
    neutralise_queued(std::nullopt);
    for (auto& [id, w] : watches_) {
      w->alive = false;
      cancel_ops(*w);
    }
    const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
    while (armed_ops_ > 0 && std::chrono::steady_clock::now() < deadline) {
      auto ts = to_kernel_timespec(std::chrono::milliseconds(100));
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      reap();
      for (const Completion& c : completions_) settle(c);
      completions_.clear();
    }
    if (armed_ops_ > 0) {
      // Freeing now would let the kernel write into freed memory; leaking is the lesser harm.
      spdlog::error("event loop: {} io_uring ops still in flight after cancel; leaking their watches",
                    armed_ops_);
      for (auto& [id, w] : watches_) {
        if (w->armed != 0) [[maybe_unused]] Watch* leaked = w.release();
      }
    }
    watches_.clear();
    graveyard_.clear();
    io_uring_queue_exit(&ring_);
  }

  LoopBackend backend() const noexcept override { return LoopBackend::kIoUring; }

  Result<WatchId> watch_readable(int fd, std::function<void()> callback) override {
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kReadable;
    w->fd = fd;
    w->on_ready = std::move(callback);
    return add(std::move(w));
  }

  Result<WatchId> watch_eventfd(int fd, std::function<void(std::uint64_t)> callback) override {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) return sys_error("fcntl(F_GETFL)");
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kEventfd;
    w->fd = fd;
    w->poll_before_read = (flags & O_NONBLOCK) != 0;
    w->on_value = std::move(callback);
    return add(std::move(w));
  }

  Result<WatchId> add_timer(std::chrono::nanoseconds delay, bool repeat,
                            std::function<void()> callback) override {
    auto w = std::make_unique<Watch>();
    w->kind = Kind::kTimer;
    w->repeat = repeat;
    // A zero period would re-fire forever within one iteration; one nanosecond matches the
    // epoll backend's timerfd.
    w->period = std::max(clamp_delay(delay), std::chrono::nanoseconds{1});
    w->deadline = to_kernel_timespec(monotonic_now() + clamp_delay(delay));
    w->on_ready = std::move(callback);
    return add(std::move(w));
  }

  void cancel(WatchId id) noexcept override {
    if (id == kWakeId) return;
    const auto it = watches_.find(id);
    if (it == watches_.end() || !it->second->alive) return;
    kill(*it->second);
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
    // Completions reaped while making room in a full SQ are already waiting: don't block. Nor
    // for long while a watch could not be re-armed.
    if (!completions_.empty()) timeout = std::chrono::nanoseconds{0};
    if (retry_rearms() && (!timeout || *timeout > std::chrono::milliseconds(1))) timeout = std::chrono::milliseconds(1);
    FLOE_TRY(submit_and_wait(timeout));
    reap();

    std::size_t ran = 0;
    dispatching_ = true;
    // Index loop: callbacks that fill the SQ reap more completions onto the end.
    for (std::size_t i = 0; i < completions_.size(); ++i) {
      const Completion c = completions_[i];
      ran += dispatch(c);
    }
    completions_.clear();
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

 private:
  Result<WatchId> add(std::unique_ptr<Watch> w) {
    const WatchId id = next_id_++;
    w->id = id;
    Watch& ref = *w;
    watches_.emplace(id, std::move(w));
    if (!arm(ref)) {
      watches_.erase(id);
      return sys_error("io_uring_get_sqe", EBUSY, "submission queue full and kernel not accepting");
    }
    return id;
  }

  // Waits (or not) for completions, submitting everything queued in the same io_uring_enter.
  Status submit_and_wait(std::optional<std::chrono::nanoseconds> timeout) {
    int r = 0;
    if (!timeout) {
      r = io_uring_submit_and_wait(&ring_, 1);
    } else if (timeout->count() <= 0) {
      const bool must_enter = io_uring_sq_ready(&ring_) > 0 || io_uring_cq_has_overflow(&ring_) ||
                              (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN) != 0;
      if (must_enter) r = io_uring_submit_and_get_events(&ring_);
    } else {
      auto ts = to_kernel_timespec(*timeout);
      io_uring_cqe* cqe = nullptr;
      r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    // ETIME: the timeout passed. EINTR: a signal; the caller's loop comes back. EBUSY/EAGAIN:
    // no room for completions or no memory for requests right now; reaping makes progress.
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      return sys_error("io_uring_enter", -r, "");
    return {};
  }

  // Copies every available completion into completions_ and frees the CQ ring, flushing the
  // kernel's overflow list (IORING_FEAT_NODROP) into it as room appears.
  void reap() noexcept {
    for (;;) {
      unsigned head = 0;
      unsigned n = 0;
      io_uring_cqe* cqe = nullptr;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        completions_.push_back({cqe->user_data, cqe->res, cqe->flags});
        ++n;
      }
      io_uring_cq_advance(&ring_, n);
      if (!io_uring_cq_has_overflow(&ring_)) return;
      if (io_uring_get_events(&ring_) < 0 && n == 0) return;
    }
  }

  // An SQE, submitting what is queued if the SQ is full. nullptr only if the kernel accepts
  // nothing even after we reaped its completions.
  io_uring_sqe* get_sqe(unsigned needed = 1) noexcept {
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (io_uring_sq_space_left(&ring_) >= needed) return io_uring_get_sqe(&ring_);
      if (io_uring_submit(&ring_) < 0) reap();
    }
    return nullptr;
  }

  void prep_poll(Watch& w, io_uring_sqe* sqe) noexcept {
    // One op per tag at a time: a tag's bit is only re-set after its final completion.
    FLOE_ASSERT((w.armed & bit(kTagPoll)) == 0);
    io_uring_prep_poll_add(sqe, w.fd, POLLIN);
    io_uring_sqe_set_data64(sqe, encode(w.id, kTagPoll));
    w.armed |= bit(kTagPoll);
    ++armed_ops_;
  }

  // Submits the op(s) that report the watch's next event. False if no SQE could be had.
  bool arm(Watch& w) noexcept {
    switch (w.kind) {
      case Kind::kReadable: {
        io_uring_sqe* sqe = get_sqe();
        if (sqe == nullptr) return false;
        prep_poll(w, sqe);
        return true;
      }
      case Kind::kEventfd:
      case Kind::kWake: {
        io_uring_sqe* sqe = get_sqe();
        if (sqe == nullptr) return false;
        if (w.poll_before_read) {
          prep_poll(w, sqe);
          return true;
        }
        FLOE_ASSERT((w.armed & bit(kTagRead)) == 0);
        io_uring_prep_read(sqe, w.fd, w.value.data(), sizeof w.value, 0);
        io_uring_sqe_set_data64(sqe, encode(w.id, kTagRead));
        w.armed |= bit(kTagRead);
        ++armed_ops_;
        return true;
      }
      case Kind::kTimer: {
        io_uring_sqe* sqe = get_sqe();
        if (sqe == nullptr) return false;
        FLOE_ASSERT((w.armed & bit(kTagTimeout)) == 0);
        io_uring_prep_timeout(sqe, &w.deadline, 0, IORING_TIMEOUT_ABS);
        io_uring_sqe_set_data64(sqe, encode(w.id, kTagTimeout));
        w.armed |= bit(kTagTimeout);
        ++armed_ops_;
        return true;
      }
    }
    return false;
  }

  // Rewrites ops we queued but have not submitted yet (those of watch `id`, or all) into NOPs
  // that keep their user_data: their completions still settle the watch's bookkeeping, but the
  // kernel never looks at their fd. An op queued for a cancelled watch would otherwise be
  // resolved at the next submit against whatever file then holds that fd number: after
  // cancel(); close(fd); a new eventfd often gets the same number, and a stale READ would eat its
  // counter. Returns the tags rewritten. Relies on liburing's documented sq.sqe_head/sqe_tail
  // (no SQPOLL, no SQE128 here).
  std::uint8_t neutralise_queued(std::optional<WatchId> id) noexcept {
    std::uint8_t tags = 0;
    io_uring_sq& sq = ring_.sq;
    for (unsigned i = sq.sqe_head; i != sq.sqe_tail; ++i) {
      io_uring_sqe* sqe = &sq.sqes[i & sq.ring_mask];
      const std::uint64_t user_data = sqe->user_data;
      const auto tag = user_data & kTagMask;
      if (tag == kTagControl || (id && (user_data >> kTagBits) != *id)) continue;
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, user_data);
      tags = static_cast<std::uint8_t>(tags | bit(tag));
    }
    return tags;
  }

  // Asks the kernel to end every op of `w` except those in `skip`; their final completions
  // arrive later.
  void cancel_ops(Watch& w, std::uint8_t skip = 0) noexcept {
    for (const Tag tag : {kTagPoll, kTagRead, kTagTimeout}) {
      if ((w.armed & bit(tag)) == 0 || (skip & bit(tag)) != 0) continue;
      io_uring_sqe* sqe = get_sqe();
      if (sqe == nullptr) {
        spdlog::warn("event loop: no SQE to cancel watch {}; it ends with the loop", w.id);
        return;
      }
      const std::uint64_t target = encode(w.id, tag);
      if (tag == kTagPoll) {
        io_uring_prep_poll_remove(sqe, target);
      } else if (tag == kTagTimeout) {
        io_uring_prep_timeout_remove(sqe, target, 0);
      } else {
        io_uring_prep_cancel64(sqe, target, 0);
      }
      io_uring_sqe_set_data64(sqe, encode(w.id, kTagControl));
    }
  }

  // Marks a watch dead (its callback never runs again) and frees it once the kernel is done.
  void kill(Watch& w) noexcept {
    w.alive = false;
    cancel_ops(w, neutralise_queued(w.id));
    if (w.armed == 0) retire(w.id);
  }

  void retire(WatchId id) noexcept {
    const auto it = watches_.find(id);
    if (it == watches_.end()) return;
    // The callback may be running right now: destroy it after the batch.
    graveyard_.push_back(std::move(it->second));
    watches_.erase(it);
    if (!dispatching_) graveyard_.clear();
  }

  // Bookkeeping for one completion; returns its watch if the watch is alive and should be
  // dispatched, nullptr if the completion is dropped.
  Watch* settle(const Completion& c) noexcept {
    const auto tag = c.user_data & kTagMask;
    if (c.user_data == LIBURING_UDATA_TIMEOUT || tag == kTagControl) return nullptr;
    const auto it = watches_.find(c.user_data >> kTagBits);
    if (it == watches_.end()) return nullptr;
    Watch& w = *it->second;
    if ((c.flags & IORING_CQE_F_MORE) == 0 && (w.armed & bit(tag)) != 0) {
      w.armed = static_cast<std::uint8_t>(w.armed & ~bit(tag));
      --armed_ops_;
    }
    if (!w.alive) {
      if (w.armed == 0) retire(w.id);
      return nullptr;
    }
    return &w;
  }

  // arm(), or, if no SQE can be had now (the kernel refusing submissions, e.g. -EBUSY while its
  // completion queue overflows), again at the start of the next run_once: a watch must never be
  // left alive but unarmed, which would lose its events without a word.
  void rearm(Watch& w) noexcept {
    if (arm(w)) return;
    if (rearm_later_.empty()) {
      spdlog::warn("event loop: no SQE to re-arm watch {} (fd {}); retrying on the next turn", w.id, w.fd);
    }
    rearm_later_.push_back(w.id);
  }

  // The watches rearm() could not arm; true if some still wait.
  bool retry_rearms() noexcept {
    if (rearm_later_.empty()) return false;
    std::vector<WatchId> ids;
    ids.swap(rearm_later_);
    for (const WatchId id : ids) {
      const auto it = watches_.find(id);
      if (it != watches_.end() && it->second->alive) rearm(*it->second);
    }
    return !rearm_later_.empty();
  }

  void fail(Watch& w, const char* op, int res) noexcept {
    spdlog::warn("event loop: {} for watch {} (fd {}) failed: {}; watch dropped", op, w.id, w.fd,
                 std::strerror(-res));
    kill(w);
  }

  // Returns 1 if a user callback ran.
  std::size_t dispatch(const Completion& c) {
    Watch* wp = settle(c);
    if (wp == nullptr) return 0;
    Watch& w = *wp;
    switch (c.user_data & kTagMask) {
      case kTagPoll:
        if (c.res < 0) {
          if (c.res != -ECANCELED) fail(w, "poll", c.res);
          else rearm(w);
          return 0;
        }
        if (w.kind != Kind::kReadable) return read_after_poll(w);
        w.on_ready();
        // A fresh one-shot poll completes at once if the callback left data unread.
        if (w.alive) rearm(w);
        return 1;
      case kTagRead:
        // 8 bytes: an eventfd's counter or a signal pipe's signal; more: a pipe's signals. Only a
        // blocking fd gets a read op (a non-blocking one is polled, then read here): whatever else
        // its pipe holds comes with the next read op, since reading it here could block.
        if (c.res > 0) {
          return deliver(w, ipc::signals_read(w.fd, w.value[0], static_cast<std::size_t>(c.res), /*drain_rest=*/false));
        }
        if (c.res == -EAGAIN) {
          // Non-blocking eventfd (or a rival reader emptied it): wait for readiness first.
          w.poll_before_read = true;
          rearm(w);
          return 0;
        }
        if (c.res == -ECANCELED || c.res == -EINTR) {
          rearm(w);
          return 0;
        }
        if (c.res == 0) {
          writer_gone(w);  // every read would end at once
          return 0;
        }
        fail(w, "read", c.res);
        return 0;
      case kTagTimeout:
        if (c.res != -ETIME && c.res != 0) {
          if (c.res == -ECANCELED) rearm(w);
          else fail(w, "timeout", c.res);
          return 0;
        }
        if (!w.repeat) {
          // Dead before the call, so a cancel() of itself from the callback is a no-op.
          w.alive = false;
          w.on_ready();
          retire(w.id);
          return 1;
        }
        advance_deadline(w);
        w.on_ready();
        if (w.alive) rearm(w);
        return 1;
    }
    return 0;
  }

  // A poll of an O_NONBLOCK eventfd or signal pipe completed: read it here (see the file comment).
  std::size_t read_after_poll(Watch& w) {
    auto value = ipc::eventfd_drain(w.fd);
    if (value) return deliver(w, *value);
    if (value.error().code == EPIPE) writer_gone(w);  // every poll would complete at once
    else fail(w, "read", -value.error().code);
    return 0;
  }

  // What an eventfd watch read: to its callback (the wake eventfd has none; 0, when a rival reader
  // emptied it first, is not reported), then armed for the next. Returns 1 if the callback ran.
  std::size_t deliver(Watch& w, std::uint64_t value) {
    if (value == 0 || w.kind == Kind::kWake) {
      rearm(w);
      return 0;
    }
    w.on_value(value);
    if (w.alive) rearm(w);
    return 1;
  }

  // A signal pipe whose writer is gone. Not an error of ours: the peer left.
  void writer_gone(Watch& w) {
    spdlog::debug("event loop: watch {} (fd {}): the writer closed its end; watch dropped", w.id, w.fd);
    kill(w);
  }

  static void advance_deadline(Watch& w) noexcept {
    const auto now = monotonic_now();
    auto next = from_kernel_timespec(w.deadline) + w.period;
    // Periods that passed entirely while we were late are skipped, not replayed.
    if (next <= now) next += ((now - next) / w.period + 1) * w.period;
    w.deadline = to_kernel_timespec(next);
  }

  io_uring ring_{};
  bool ring_ok_ = false;
  Fd wake_;
  std::atomic<bool> stop_{false};
  WatchId next_id_ = 1;
  bool dispatching_ = false;
  std::size_t armed_ops_ = 0;
  std::unordered_map<WatchId, std::unique_ptr<Watch>> watches_;
  std::vector<std::unique_ptr<Watch>> graveyard_;
  std::vector<WatchId> rearm_later_;  // watches rearm() could not arm (retry_rearms)
  std::vector<Completion> completions_;
};

}  // namespace

Result<std::unique_ptr<EventLoop>> make_uring_loop(const LoopOptions& options) {
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return sys_error("eventfd", "wake eventfd");
  auto loop = std::make_unique<UringLoop>(std::move(wake));
  FLOE_TRY(loop->init(options.queue_depth == 0 ? 1 : options.queue_depth));
  return std::unique_ptr<EventLoop>(std::move(loop));
}

}  // namespace floe::ipc::detail
