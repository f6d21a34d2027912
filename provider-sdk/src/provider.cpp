// The provider's machinery: one epoll set (fd()) holding the management socket, the connection's
// doorbell signal (or every granted device's tx signal, without doorbells), a wake eventfd for
// answers queued from other threads, and timerfds for reconnects, result retries and polled rings.
// process() dispatches it without blocking; run() waits on it in an ipc::EventLoop. The signals
// between core and provider are pipes (ipc/notify.hpp): each side holds its own end.
//
// How the tx rings (core -> provider) are waited on, per the ring's NotifyMode:
//   eventfd  the core signals our doorbell (or the device's tx signal pipe) when we announced
//            sleep (prepare_sleep);
//   futex    the core bumps the ring's futex word and FUTEX_WAKEs it; a FutexBridge thread waits on
//            up to 127 such words at once (futex_waitv) and signals an eventfd of ours per device,
//            so the rest is the eventfd path;
//   spin     while any ring spins, an always-readable eventfd sits in the epoll set: the loop never
//            sleeps and every pass drains every spinning ring (a core busy by design);
//   poll     drained on a 1 ms timerfd (kPollInterval).
#include "floe/sdk/provider.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/sdk/backoff.hpp"
#include "futex_bridge.hpp"
#include "management.pb.h"

namespace floe::sdk {
namespace detail {

using Stored = std::variant<Value, std::string, std::vector<std::string>>;

/// The connection's doorbells (Welcome.doorbells): ours, which the core rings for the tx rings,
/// and one per shard of the core, which we ring for the rx rings of that shard's devices.
struct Bells {
  explicit Bells(ipc::Region r) noexcept : region(std::move(r)) {}
  ipc::Region region;
  std::vector<ipc::Doorbell> bells;  // [0]: ours; [1 + i]: shard i's
  ipc::Fd signal;                    // our doorbell's signal pipe (read end), non-blocking
  std::vector<ipc::Fd> shard_signals;  // each shard's signal pipe (write ends)
  std::unordered_map<std::uint32_t, DeviceState*> slots;  // granted devices by slot
};

/// One grant of the core: the mapped region and the handles on it.
struct Attachment {
  ipc::Region region;
  ipc::TreeWriter writer;
  ipc::RingProducer rx;
  ipc::RingConsumer tx;
  ipc::Fd tx_signal;  // without doorbells: the tx ring's signal pipe (read end)
  ipc::Fd rx_signal;  // and the rx ring's (write end); see ipc/notify.hpp
  ipc::Fd bridge_eventfd{};  // NotifyMode::kFutex: ours, signalled by the bridge for each wake
  bool polled = false;     // the tx ring's mode never signals: drained on the poll timer
  bool spin = false;       // drained on every pass of the loop (NotifyMode::kSpin)
  FutexBridge* bridge = nullptr;  // watching the tx ring's futex word (NotifyMode::kFutex)
  bool tx_broken = false;  // the tx ring failed validation: no longer read
  std::shared_ptr<Bells> bells{};  // with doorbells (no eventfds of its own): kept while rx rings it
  std::uint32_t slot = 0;

  /// What the loop watches for this tx ring (without doorbells).
  [[nodiscard]] int wake_fd() const noexcept { return bridge_eventfd ? bridge_eventfd.get() : tx_signal.get(); }
};

struct DeviceState {
  DeviceSpec spec;
  std::unordered_map<std::string, EntityIndex> entity_index;
  Device* self = nullptr;
  std::weak_ptr<Device> weak_self;  // Requests keep the Device alive past a remove_device
  std::weak_ptr<ProviderState> provider;

  // Written by the provider thread with `mu` held; read by it without the lock, by others with it.
  std::unique_ptr<Attachment> att;
  std::uint64_t att_generation = 0;  // bumped per grant; requests carry the one they came from
  std::atomic<bool> online{false};
  // set_available(): the wish (any thread) and whether the core has yet to hear it.
  std::atomic<bool> available{true};
  std::atomic<bool> availability_dirty{false};
  std::string availability_reason;  // mu

  mutable std::mutex mu;
  std::vector<std::vector<std::optional<Stored>>> values;  // [entity][component position]; mu
  std::deque<std::vector<std::byte>> pending_results;      // results the rx ring had no room for; mu
  std::uint64_t dropped_changes = 0;                        // change records left out (overflow); mu

  [[nodiscard]] const ComponentSpec* find(EntityIndex e, Component c, std::size_t& pos) const noexcept {
    if (e >= spec.entities.size()) return nullptr;
    const auto& comps = spec.entities[e].components;
    for (std::size_t i = 0; i < comps.size(); ++i) {
      if (comps[i].component == c) {
        pos = i;
        return &comps[i];
      }
    }
    return nullptr;
  }

  WriteStatus check(EntityIndex e, Component c, const Stored& v, std::size_t& pos) const noexcept;
  WriteStatus write(EntityIndex e, Component c, Stored v) noexcept;
  WriteStatus write_locked(Attachment& a, EntityIndex e, Component c, const Stored& v) noexcept;
  void answer(std::uint64_t generation, std::uint64_t id, RequestStatus status, std::string_view message) noexcept;
  /// Pushes queued results while the ring has room; true if none remain. Caller holds mu.
  bool flush_results_locked() noexcept;
};

constexpr std::size_t kMaxOutboxBytes = std::size_t{64} << 20;  // unsent envelopes before we give up on the core

/// "N of RLIMIT_NOFILE M descriptors open" if fewer than `needed` descriptors are free, else empty.
/// The kernel delivers a packet whose descriptors do not fit the receiver's table with MSG_CTRUNC,
/// which looks like a misbehaving core unless the shortage is named.
std::string descriptor_shortage(rlim_t needed) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t{1} << 20)) return {};
  rlim_t open = 0;
  for (rlim_t fd = 0; fd < rl.rlim_cur; ++fd) {
    if (::fcntl(static_cast<int>(fd), F_GETFD) >= 0) ++open;
  }
  if (open + needed <= rl.rlim_cur) return {};
  return fmt::format("{} of RLIMIT_NOFILE {} descriptors open", open, rl.rlim_cur);
}

enum Tag : std::uint64_t {
  kTagWake = 1, kTagTimer = 2, kTagRetry = 3, kTagSocket = 4, kTagPoll = 5, kTagHeartbeat = 6, kTagSpin = 7,
  kTagBell = 8
};

/// The interval at which rings in NotifyMode::kPoll are drained (the ring header's
/// poll_interval_us is the core's, for its side).
constexpr auto kPollInterval = std::chrono::milliseconds(1);

struct ProviderState {
  ProviderOptions options;
  std::string socket_path;
  std::optional<Error> init_error;
  ipc::Fd epoll;
  ipc::Fd wake;         // eventfd: answers queued by other threads, stop()
  ipc::Fd timer;        // timerfd: reconnect attempts and the handshake timeout
  ipc::Fd retry_timer;  // timerfd: results waiting for room in an rx ring
  ipc::Fd poll_timer;   // timerfd: tx rings in poll mode (and futex rings no bridge could take)
  ipc::Fd heartbeat_timer;  // timerfd: our Heartbeat while connected
  ipc::Fd spin;             // eventfd, always readable: in the epoll set while a tx ring spins
  bool poll_armed = false;
  std::size_t spinning = 0;  // attached tx rings in NotifyMode::kSpin
  FutexBridges bridges;      // threads waiting on the futex words of NotifyMode::kFutex tx rings
  std::shared_ptr<Bells> bells;  // this connection's doorbells, if the core granted them
  bool bell_again = false;       // on_bell stopped with work left: the wake eventfd brings us back
  bool bells_failed = false;     // the last doorbells were unusable: the next Hello asks for none
                                 // (and the one after asks again)

  std::deque<std::shared_ptr<Device>> devices;
  // Removed by remove_device() during this process() call: kept until it returns, since events of
  // the current epoll batch (tagged with the DeviceState) and a ring drain may still refer to them.
  std::vector<std::shared_ptr<Device>> retired_devices;
  std::vector<std::unique_ptr<Attachment>> retired_attachments;
  std::vector<std::string> removals;  // remove_device() while not connected: told on the next Welcome
  std::unordered_map<std::uint64_t, std::string> pending_removes;  // envelope id -> device id
  std::function<void(Request&)> handler;
  Backoff backoff;

  enum class Conn { kIdle, kHello, kReady } conn = Conn::kIdle;
  std::optional<ipc::Channel> channel;
  bool broken = false;             // a send failed: disconnect at the next safe point
  std::string broken_reason;
  // Envelopes the socket had no room for (a burst: declaring thousands of devices at once), sent
  // in order when it becomes writable. Bounded: a core that stops reading is a broken connection.
  std::deque<std::string> outbox;
  std::size_t outbox_bytes = 0;
  bool want_write = false;
  std::uint64_t next_id = 1;
  std::unordered_map<std::uint64_t, DeviceState*> pending_adds;  // envelope id -> device
  unsigned failed_attempts = 0;

  std::atomic<bool> connected{false};
  std::atomic<bool> stop_requested{false};
  std::atomic<ipc::EventLoop*> loop{nullptr};

  explicit ProviderState(ProviderOptions o)
      : options(std::move(o)), backoff(options.reconnect_min, options.reconnect_max) {
    if (options.socket_dir.empty()) options.socket_dir = ipc::default_socket_dir();
    socket_path = options.socket_dir + "/" + std::string(ipc::kProviderSocketName);
  }

  void init();
  Status process();
  void dispatch(std::uint64_t tag);

  void epoll_add(int fd, std::uint64_t tag);
  void epoll_del(int fd) noexcept { ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr); }
  void arm(int fd, std::chrono::nanoseconds delay, std::chrono::nanoseconds period = {}) noexcept;

  void schedule_reconnect();
  void try_connect();
  void send(const proto::Envelope& env);
  void flush_outbox();
  void set_want_write(bool on) noexcept;
  void announce(DeviceState& ds);
  void send_availability(DeviceState& ds);
  void send_remove(const std::string& id);
  Status remove_device(std::string_view id);
  void on_socket_readable();
  void handle(proto::Envelope& env, std::vector<ipc::Fd>& fds);
  void handle_grant(const proto::DeviceGrant& grant, std::vector<ipc::Fd>& fds, DeviceState* expected);
  /// The Welcome's doorbells; an error if they are unusable.
  Status open_bells(const proto::DoorbellGrant& grant, std::vector<ipc::Fd>& fds);
  /// Our doorbell rang (or a pass is due): drain every device it names, then raise its flag.
  void on_bell();
  void disconnect(const std::string& reason, bool reconnect = true);
  /// `reason`, or the core's own reason if the core sent one before closing the connection.
  std::string with_last_word(std::string reason);
  /// Unmaps the device's region; `retire`: keep the mapping until process() returns.
  void detach(DeviceState& ds, bool retire = false) noexcept;
  void drain(DeviceState& ds);
  /// drain() for every attached device whose attachment satisfies `which`.
  template <typename Pred>
  void drain_all(Pred which) {
    // By index: a request handler may remove a device (devices shrinks; the DeviceState is retired,
    // not freed), which at worst skips one device until the next pass.
    for (std::size_t i = 0; i < devices.size(); ++i) {
      DeviceState& ds = *devices[i]->state_;
      if (ds.att && which(*ds.att)) drain(ds);
    }
  }
  void handle_record(DeviceState& ds, const ipc::RecordView& view);
  void flush_all_results();
  DeviceState* find_device(std::string_view id) noexcept;
};

// ---- DeviceState ---------------------------------------------------------------------------------

WriteStatus DeviceState::check(EntityIndex e, Component c, const Stored& v, std::size_t& pos) const noexcept {
  if (e >= spec.entities.size()) return WriteStatus::kNoSuchEntity;
  const ComponentSpec* cs = find(e, c, pos);
  const ipc::ComponentInfo* info = ipc::find_component(c);
  if (cs == nullptr || info == nullptr) return WriteStatus::kNoSuchComponent;
  if (const auto* value = std::get_if<Value>(&v)) {
    std::uint64_t bits = 0;
    switch (ipc::pack(*info, *value, bits)) {
      case ipc::PackStatus::kOk: return WriteStatus::kOk;
      case ipc::PackStatus::kOutOfRange: return WriteStatus::kOutOfRange;
      default: return WriteStatus::kWrongType;
    }
  }
  if (const auto* text = std::get_if<std::string>(&v)) {
    if (info->encoding != ipc::Encoding::kText) return WriteStatus::kWrongType;
    const std::size_t cap = cs->max_bytes != 0 ? cs->max_bytes : ipc::kTreeDefaultTextBytes;
    return text->size() > cap ? WriteStatus::kTooLong : WriteStatus::kOk;
  }
  if (info->encoding != ipc::Encoding::kList) return WriteStatus::kWrongType;
  const std::size_t cap = cs->max_bytes != 0 ? cs->max_bytes : ipc::kTreeDefaultListBytes;
  const auto& items = std::get<std::vector<std::string>>(v);
  return ipc::encoded_list_size(std::span<const std::string>(items)) > cap ? WriteStatus::kTooLong : WriteStatus::kOk;
}

WriteStatus DeviceState::write_locked(Attachment& a, EntityIndex e, Component c, const Stored& v) noexcept {
  WriteStatus s;
  if (const auto* value = std::get_if<Value>(&v)) {
    s = a.writer.set(e, c, *value);
  } else if (const auto* text = std::get_if<std::string>(&v)) {
    s = a.writer.set_text(e, c, *text);
  } else {
    s = a.writer.set_list(e, c, std::span<const std::string>(std::get<std::vector<std::string>>(v)));
  }
  if (s != WriteStatus::kOk) return s;
  // The tree first (above), then the record: a core that sees the record sees the value. A full
  // ring leaves the record out and sets the overflow flag, which makes the core rescan.
  const ipc::ChangeRecord rec{.entity = e, .component = ipc::to_id(c), .reserved = 0, .seq = a.writer.change_seq(e)};
  if (!a.rx.try_push(ipc::kChangeRecord, std::as_bytes(std::span(&rec, 1)))) ++dropped_changes;
  return WriteStatus::kOk;
}

WriteStatus DeviceState::write(EntityIndex e, Component c, Stored v) noexcept {
  std::size_t pos = 0;
  if (const WriteStatus s = check(e, c, v, pos); s != WriteStatus::kOk) return s;
  std::lock_guard lock(mu);
  WriteStatus s = WriteStatus::kOk;
  if (att) s = write_locked(*att, e, c, v);
  if (s == WriteStatus::kOk && ipc::find_component(c)->encoding != ipc::Encoding::kMarker) values[e][pos] = std::move(v);
  return s;
}

bool DeviceState::flush_results_locked() noexcept {
  while (!pending_results.empty()) {
    if (!att || !att->rx.try_push(ipc::kRequestResult, pending_results.front())) return !att;
    pending_results.pop_front();
  }
  return true;
}

void DeviceState::answer(std::uint64_t generation, std::uint64_t id, RequestStatus status,
                         std::string_view message) noexcept {
  bool queued = false;
  try {
    auto bytes = encode_result(id, status, message);
    std::lock_guard lock(mu);
    if (!att || att_generation != generation) {
      spdlog::debug("floe-sdk: device '{}': answer to request {} dropped: its connection is gone", spec.id, id);
      return;
    }
    // Results keep their order: once one waits, the rest queue behind it.
    if (!pending_results.empty() || !att->rx.try_push(ipc::kRequestResult, bytes)) {
      pending_results.push_back(std::move(bytes));
      queued = true;
    }
  } catch (const std::exception& e) {
    spdlog::error("floe-sdk: device '{}': cannot answer request {}: {}", spec.id, id, e.what());
    return;
  }
  if (queued) {
    if (auto p = provider.lock(); p && p->wake) ipc::eventfd_signal(p->wake.get());
  }
}

// ---- ProviderState -------------------------------------------------------------------------------

void ProviderState::init() {
  auto fail = [this](std::string_view op) { init_error = sys_error(op, "provider initialisation").value(); };
  // Our rx rings signal the core through pipes (ipc/notify.hpp). A signal written after the core
  // closed its end must fail with EPIPE, not kill the process: ignore SIGPIPE unless the
  // application chose what it does.
  struct sigaction pipe_action {};
  if (::sigaction(SIGPIPE, nullptr, &pipe_action) == 0 && pipe_action.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
  epoll = ipc::Fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return fail("epoll_create1");
  auto w = ipc::make_eventfd(/*nonblocking=*/true);
  if (!w) {
    init_error = w.error();
    return;
  }
  wake = std::move(*w);
  auto s = ipc::make_eventfd(/*nonblocking=*/true);
  if (!s) {
    init_error = s.error();
    return;
  }
  spin = std::move(*s);
  ipc::eventfd_signal(spin.get());  // never drained: level-triggered epoll reports it on every pass
  for (ipc::Fd* t : {&timer, &retry_timer, &poll_timer, &heartbeat_timer}) {
    *t = ipc::Fd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!*t) return fail("timerfd_create");
  }
  epoll_add(wake.get(), kTagWake);
  epoll_add(timer.get(), kTagTimer);
  epoll_add(retry_timer.get(), kTagRetry);
  epoll_add(poll_timer.get(), kTagPoll);
  epoll_add(heartbeat_timer.get(), kTagHeartbeat);
  arm(timer.get(), std::chrono::nanoseconds(1));  // the first connection attempt, at once
}

void ProviderState::epoll_add(int fd, std::uint64_t tag) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag;
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    spdlog::error("floe-sdk: epoll_ctl(ADD) failed: {}", std::strerror(errno));
  }
}

void ProviderState::arm(int fd, std::chrono::nanoseconds delay, std::chrono::nanoseconds period) noexcept {
  itimerspec spec{};
  spec.it_value.tv_sec = static_cast<time_t>(delay.count() / 1'000'000'000);
  spec.it_value.tv_nsec = static_cast<long>(delay.count() % 1'000'000'000);
  spec.it_interval.tv_sec = static_cast<time_t>(period.count() / 1'000'000'000);
  spec.it_interval.tv_nsec = static_cast<long>(period.count() % 1'000'000'000);
  ::timerfd_settime(fd, 0, &spec, nullptr);
}

Status ProviderState::process() {
  if (init_error) return tl::unexpected(*init_error);
  epoll_event events[32];
  int n = ::epoll_wait(epoll.get(), events, 32, 0);
  if (n < 0) {
    if (errno == EINTR) return {};
    return sys_error("epoll_wait", "provider");
  }
  for (int i = 0; i < n; ++i) {
    dispatch(events[i].data.u64);
    if (broken) disconnect(with_last_word(broken_reason));
  }
  retired_attachments.clear();
  retired_devices.clear();
  if (stop_requested.load(std::memory_order_acquire)) {
    if (ipc::EventLoop* l = loop.load(std::memory_order_acquire)) l->stop();
  }
  return {};
}

void ProviderState::dispatch(std::uint64_t tag) {
  std::uint64_t ticks = 0;
  switch (tag) {
    case kTagWake:
      (void)ipc::eventfd_drain(wake.get());
      if (std::exchange(bell_again, false)) on_bell();
      flush_all_results();
      if (conn == Conn::kReady) {
        for (auto& d : devices) {
          if (d->state_->availability_dirty.load(std::memory_order_acquire)) send_availability(*d->state_);
        }
      }
      return;
    case kTagHeartbeat: {
      (void)!::read(heartbeat_timer.get(), &ticks, sizeof ticks);
      if (conn != Conn::kReady) return;
      proto::Envelope hb;
      hb.set_id(next_id++);
      hb.mutable_heartbeat()->set_sequence(hb.id());
      send(hb);
      return;
    }
    case kTagTimer:
      (void)!::read(timer.get(), &ticks, sizeof ticks);
      if (conn == Conn::kIdle) {
        try_connect();
      } else if (conn == Conn::kHello) {
        disconnect("floe-core did not answer Hello within 5 s");
      }
      return;
    case kTagRetry:
      (void)!::read(retry_timer.get(), &ticks, sizeof ticks);
      flush_all_results();
      return;
    case kTagSocket:
      on_socket_readable();
      return;
    case kTagPoll:
      (void)!::read(poll_timer.get(), &ticks, sizeof ticks);
      drain_all([](const Attachment& a) { return a.polled; });
      return;
    case kTagBell:
      on_bell();
      return;
    case kTagSpin:
      drain_all([](const Attachment& a) { return a.spin; });
      // The core's threads that feed and read these rings may need this CPU (two vCPUs, a spinning
      // shard): offer it once per pass, as RingConsumer::wait does while it spins.
      std::this_thread::yield();
      return;
    default: {
      // A device's tx eventfd. The tag is its DeviceState; it may have been detached (and even
      // re-attached) by an earlier event of this batch, so read only the current attachment's fd,
      // which is non-blocking.
      auto* ds = reinterpret_cast<DeviceState*>(tag);
      if (!ds->att) return;
      // An error: the core closed its end of the pipe (it let the device go), which would read
      // as ready forever. The ring is still drained; the device's removal follows.
      if (!ipc::eventfd_drain(ds->att->wake_fd())) epoll_del(ds->att->wake_fd());
      ds->att->tx.finish_sleep();
      drain(*ds);
      return;
    }
  }
}

void ProviderState::flush_all_results() {
  bool waiting = false;
  for (auto& d : devices) {
    std::lock_guard lock(d->state_->mu);
    if (!d->state_->flush_results_locked()) waiting = true;
  }
  // The core frees room without telling us: look again shortly.
  if (waiting) arm(retry_timer.get(), std::chrono::milliseconds(1));
}

void ProviderState::schedule_reconnect() {
  const auto delay = backoff.next();
  arm(timer.get(), delay);
}

void ProviderState::try_connect() {
  auto ch = ipc::Channel::connect(socket_path);
  if (!ch) {
    const auto delay = backoff.next();
    arm(timer.get(), delay);
    // First failure at warn, the retries quieter: a provider started before the core is normal.
    const auto level = failed_attempts++ == 0 ? spdlog::level::warn : spdlog::level::info;
    spdlog::log(level, "floe-sdk: provider '{}': floe-core not reachable at {} ({}); retrying in {:.1f} s",
                options.name, socket_path, std::strerror(ch.error().code), static_cast<double>(delay.count()) / 1000.0);
    return;
  }
  if (auto s = ch->set_nonblocking(true); !s) {
    spdlog::error("floe-sdk: {}", s.error().to_string());
    schedule_reconnect();
    return;
  }
  channel = std::move(*ch);
  broken = false;
  epoll_add(channel->fd(), kTagSocket);
  conn = Conn::kHello;
  proto::Envelope env;
  env.set_id(next_id++);
  auto* hello = env.mutable_hello();
  hello->set_protocol_version(ipc::kProtocolVersion);
  hello->set_peer_name(options.name);
  hello->set_role(proto::PEER_ROLE_PROVIDER);
  hello->set_doorbells(options.doorbells && !bells_failed);
  send(env);
  arm(timer.get(), std::chrono::seconds(5));  // handshake timeout
}

void ProviderState::send(const proto::Envelope& env) {
  if (!channel || broken) return;
  std::string bytes = env.SerializeAsString();
  if (outbox.empty()) {
    auto s = channel->send(std::as_bytes(std::span(bytes)));
    if (s) return;
    if (s.error().code != EAGAIN && s.error().code != EWOULDBLOCK) {
      broken = true;
      broken_reason = "send to floe-core failed: " + s.error().to_string();
      return;
    }
  }
  if (outbox_bytes + bytes.size() > kMaxOutboxBytes) {
    broken = true;
    broken_reason = fmt::format("floe-core has not read our last {} messages ({} bytes)", outbox.size(), outbox_bytes);
    return;
  }
  outbox_bytes += bytes.size();
  outbox.push_back(std::move(bytes));
  set_want_write(true);
}

void ProviderState::flush_outbox() {
  while (!outbox.empty() && channel && !broken) {
    auto s = channel->send(std::as_bytes(std::span(outbox.front())));
    if (!s) {
      if (s.error().code == EAGAIN || s.error().code == EWOULDBLOCK) return;  // still full: wait for EPOLLOUT
      broken = true;
      broken_reason = "send to floe-core failed: " + s.error().to_string();
      return;
    }
    outbox_bytes -= outbox.front().size();
    outbox.pop_front();
  }
  if (outbox.empty()) set_want_write(false);
}

void ProviderState::set_want_write(bool on) noexcept {
  if (want_write == on || !channel) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0U);
  ev.data.u64 = kTagSocket;
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, channel->fd(), &ev) != 0) {
    spdlog::error("floe-sdk: epoll_ctl(MOD) failed: {}", std::strerror(errno));
    return;
  }
  want_write = on;
}

void ProviderState::announce(DeviceState& ds) {
  proto::Envelope env;
  env.set_id(next_id++);
  auto* add = env.mutable_add_device();
  add->set_device_id(ds.spec.id);
  add->set_name(ds.spec.name);
  for (const auto& g : ds.spec.groups) add->add_groups(g);
  for (const auto& e : ds.spec.entities) {
    auto* es = add->add_entities();
    es->set_id(e.id);
    es->set_name(e.name);
    for (const auto& c : e.components) {
      auto* cs = es->add_components();
      cs->set_component(ipc::to_id(c.component));
      cs->set_max_bytes(c.max_bytes);
    }
  }
  pending_adds[env.id()] = &ds;
  send(env);
  // The core starts every grant available: repeat an unreachable state after each declaration.
  if (!ds.available.load(std::memory_order_acquire)) {
    send_availability(ds);
  } else {
    ds.availability_dirty.store(false, std::memory_order_release);
  }
}

void ProviderState::send_availability(DeviceState& ds) {
  proto::Envelope env;
  env.set_id(next_id++);
  auto* a = env.mutable_device_availability();
  a->set_device_id(ds.spec.id);
  {
    std::lock_guard lock(ds.mu);
    // Cleared before reading the wish: a set_available() racing with us marks it dirty again.
    ds.availability_dirty.store(false, std::memory_order_release);
    a->set_available(ds.available.load(std::memory_order_acquire));
    a->set_reason(ds.availability_reason);
  }
  send(env);
}

void ProviderState::send_remove(const std::string& id) {
  proto::Envelope env;
  env.set_id(next_id++);
  env.mutable_remove_device()->set_device_id(id);
  pending_removes[env.id()] = id;
  send(env);
}

Status ProviderState::remove_device(std::string_view id) {
  auto it = std::find_if(devices.begin(), devices.end(), [&](const auto& d) { return d->state_->spec.id == id; });
  if (it == devices.end()) return logic_error("sdk.remove_device", "no device '" + std::string(id) + "'");
  std::shared_ptr<Device> dev = *it;
  devices.erase(it);
  DeviceState& ds = *dev->state_;
  for (auto p = pending_adds.begin(); p != pending_adds.end();) {
    p = p->second == &ds ? pending_adds.erase(p) : std::next(p);
  }
  detach(ds, /*retire=*/true);
  retired_devices.push_back(std::move(dev));
  if (conn == Conn::kReady) {
    send_remove(std::string(id));
  } else {
    removals.emplace_back(id);
  }
  spdlog::info("floe-sdk: provider '{}': device '{}' removed", options.name, id);
  return {};
}

void ProviderState::on_socket_readable() {
  if (want_write) flush_outbox();
  // Bounded: a chatty core must not starve the rings.
  for (int i = 0; i < 64 && channel && !broken; ++i) {
    proto::Envelope env;
    auto fds = channel->receive(env);
    if (!fds) {
      if (fds.error().code == EAGAIN || fds.error().code == EWOULDBLOCK) return;
      // A grant carries 1 descriptor with doorbells, 3 without; the Welcome with doorbells 2 + one
      // per shard of the core (at most kMaxPacketFds).
      const rlim_t needed = conn == Conn::kHello ? ipc::kMaxPacketFds : 3;
      if (const std::string shortage = descriptor_shortage(needed); !shortage.empty()) {
        // A new connection would fail the same way at once: retry at the slowest pace.
        backoff.saturate();
        spdlog::error("floe-sdk: provider '{}' is out of file descriptors ({}): the core's {} could not be "
                      "received; raise the limit (ulimit -n) or declare fewer devices",
                      options.name, shortage, conn == Conn::kHello ? "Welcome (with its doorbells)" : "grant");
      }
      disconnect(with_last_word("lost the connection to floe-core: " + fds.error().to_string()));
      return;
    }
    handle(env, *fds);
  }
}

void ProviderState::handle(proto::Envelope& env, std::vector<ipc::Fd>& fds) {
  switch (env.body_case()) {
    case proto::Envelope::kWelcome:
      if (conn != Conn::kHello) return;
      conn = Conn::kReady;
      connected.store(true, std::memory_order_release);
      backoff.reset();
      failed_attempts = 0;
      arm(timer.get(), {});  // handshake done: disarm the timeout
      if (env.welcome().has_doorbells()) {
        if (auto r = open_bells(env.welcome().doorbells(), fds); !r) {
          // Every grant of this connection would need them: ask for none next time.
          bells_failed = true;
          disconnect(with_last_word("unusable doorbells from floe-core: " + r.error().message));
          return;
        }
      } else {
        // Connected without them: the next connection (maybe to a core fixed or replaced
        // meanwhile) asks again.
        bells_failed = false;
      }
      spdlog::info("floe-sdk: provider '{}' connected to floe-core '{}' (session {}), declaring {} device(s)",
                   options.name, env.welcome().core_name(), env.welcome().session_id(), devices.size());
      for (const auto& id : removals) send_remove(id);
      removals.clear();
      for (auto& d : devices) announce(*d->state_);
      if (options.heartbeat_interval.count() > 0) arm(heartbeat_timer.get(), options.heartbeat_interval, options.heartbeat_interval);
      return;
    case proto::Envelope::kError: {
      const auto& err = env.error();
      if (conn == Conn::kHello) {
        if (err.code() == proto::ERROR_CODE_PROTOCOL_VERSION) {
          // Retrying cannot help until one side is upgraded, but the core may be replaced by one
          // that speaks our version: keep trying, at the slowest pace.
          backoff.saturate();
          spdlog::error("floe-sdk: provider '{}': floe-core refused protocol version {}: {}; retrying every {:.1f} s",
                        options.name, ipc::kProtocolVersion, err.message(),
                        static_cast<double>(backoff.max().count()) / 1000.0);
        } else {
          spdlog::error("floe-sdk: provider '{}': floe-core refused the connection: {}", options.name, err.message());
        }
        disconnect("refused by floe-core");
        return;
      }
      if (auto it = pending_adds.find(env.id()); it != pending_adds.end()) {
        spdlog::error("floe-sdk: provider '{}': floe-core refused device '{}': {}", options.name, it->second->spec.id,
                      err.message());
        pending_adds.erase(it);
      } else if (auto r = pending_removes.find(env.id()); r != pending_removes.end()) {
        // A core that never knew the device (or forgot it) has nothing to remove.
        spdlog::debug("floe-sdk: provider '{}': removing '{}': {}", options.name, r->second, err.message());
        pending_removes.erase(r);
      } else {
        spdlog::warn("floe-sdk: provider '{}': floe-core reports: {}", options.name, err.message());
      }
      if (err.fatal()) disconnect("floe-core closed the connection: " + err.message());
      return;
    }
    case proto::Envelope::kDeviceGrant: {
      DeviceState* expected = nullptr;
      if (auto it = pending_adds.find(env.id()); it != pending_adds.end()) {
        expected = it->second;
        pending_adds.erase(it);
      }
      handle_grant(env.device_grant(), fds, expected);
      return;
    }
    case proto::Envelope::kDeviceRemoved:
      if (pending_removes.erase(env.id()) > 0) return;  // confirms our remove_device()
      if (DeviceState* ds = find_device(env.device_removed().device_id())) {
        spdlog::warn("floe-sdk: provider '{}': floe-core removed device '{}'", options.name, ds->spec.id);
        detach(*ds);
      }
      return;
    case proto::Envelope::kHeartbeat: {
      if (env.id() != 0 && env.id() < next_id) return;  // the core's echo of one of ours
      // Echoed, so a core that pings its providers sees us alive.
      proto::Envelope reply;
      reply.set_id(env.id());
      reply.mutable_heartbeat()->set_sequence(env.heartbeat().sequence());
      send(reply);
      return;
    }
    default:
      spdlog::warn("floe-sdk: provider '{}': ignoring unexpected message {} from floe-core", options.name,
                   static_cast<int>(env.body_case()));
      return;
  }
}

void ProviderState::handle_grant(const proto::DeviceGrant& grant, std::vector<ipc::Fd>& fds, DeviceState* expected) {
  DeviceState* ds = find_device(grant.device_id());
  auto refuse = [&](const std::string& why) {
    spdlog::error("floe-sdk: provider '{}': unusable grant for device '{}': {}", options.name, grant.device_id(), why);
  };
  if (ds == nullptr || (expected != nullptr && expected != ds)) return refuse("not the device that was declared");
  const auto& roles = grant.region().fd_roles();
  if (static_cast<std::size_t>(roles.size()) != fds.size()) return refuse("fd roles do not match the fds");
  // With doorbells the grant carries the region alone; the eventfds are the connection's.
  const std::uint32_t slot = grant.doorbell_slot();
  const std::uint32_t shard = grant.shard();
  if (bells && (slot >= bells->bells[0].slots() || shard >= bells->shard_signals.size())) {
    return refuse(fmt::format("doorbell slot {} or shard {} out of range", slot, shard));
  }
  ipc::Fd region_fd, tx_fd, rx_fd;
  for (int i = 0; i < roles.size(); ++i) {
    auto& fd = fds[static_cast<std::size_t>(i)];
    switch (roles[i]) {
      case proto::FD_ROLE_REGION: region_fd = std::move(fd); break;
      case proto::FD_ROLE_TX_EVENTFD: tx_fd = std::move(fd); break;
      case proto::FD_ROLE_RX_EVENTFD: rx_fd = std::move(fd); break;
      default: break;
    }
  }
  if (!region_fd) return refuse("needs a region");
  if (!bells && (!tx_fd || !rx_fd)) return refuse("needs a region, a tx eventfd and an rx eventfd");
  auto region = ipc::Region::open(std::move(region_fd), {.expected_size = static_cast<std::size_t>(grant.region().size()),
                                                         .require_kind = true, .kind = ipc::RegionKind::kDevice});
  if (!region) return refuse(region.error().to_string());
  auto parts = ipc::device_region_attach(std::span(region->data(), region->size()));
  if (!parts) return refuse(parts.error().to_string());
  auto writer = ipc::TreeWriter::attach(parts->tree);
  if (!writer) return refuse(writer.error().to_string());
  if (writer->entity_count() != ds->spec.entities.size()) {
    return refuse("the region holds " + std::to_string(writer->entity_count()) + " entities, the device declares " +
                  std::to_string(ds->spec.entities.size()));
  }
  const int rx_notify = bells ? bells->shard_signals[shard].get() : rx_fd.get();
  auto rx = ipc::RingProducer::attach(parts->rx, rx_notify);
  if (!rx) return refuse(rx.error().to_string());
  auto tx = ipc::RingConsumer::attach(parts->tx, bells ? bells->signal.get() : tx_fd.get());
  if (!tx) return refuse(tx.error().to_string());
  if (bells && static_cast<ipc::NotifyMode>(tx->header().notify_mode) != ipc::NotifyMode::kEventfd) {
    return refuse("doorbells with rings that are not in eventfd mode");
  }
  // Non-blocking, so a stale readiness event never blocks the loop. Only the core writes it.
  if (tx_fd) ::fcntl(tx_fd.get(), F_SETFL, ::fcntl(tx_fd.get(), F_GETFL) | O_NONBLOCK);

  detach(*ds);  // a re-grant replaces the old region
  auto a = std::make_unique<Attachment>(Attachment{std::move(*region), std::move(*writer), std::move(*rx),
                                                   std::move(*tx), std::move(tx_fd), std::move(rx_fd)});
  if (bells) {
    a->bells = bells;
    a->slot = slot;
    a->rx.use_doorbell(&bells->bells[1 + shard], slot, rx_notify);
    bells->slots[slot] = ds;
  }
  switch (static_cast<ipc::NotifyMode>(a->tx.header().notify_mode)) {
    case ipc::NotifyMode::kEventfd: break;
    case ipc::NotifyMode::kFutex:
      // Before the first prepare_sleep (drain() below): the bridge's snapshot of the word must
      // precede any bump the core makes for our sleep.
      // The bridge signals an eventfd of ours: the grant's tx_signal is a pipe's read end.
      if (auto e = ipc::make_eventfd(/*nonblocking=*/true); e) {
        a->bridge_eventfd = std::move(*e);
        a->bridge = bridges.add(a->tx.header().futex_word, a->bridge_eventfd.get());
      }
      a->polled = a->bridge == nullptr;  // no thread for it: the poll timer keeps it served
      break;
    case ipc::NotifyMode::kSpin:
      a->spin = true;
      if (spinning++ == 0) epoll_add(spin.get(), kTagSpin);
      break;
    default: a->polled = true; break;
  }
  if (!a->bells) epoll_add(a->wake_fd(), reinterpret_cast<std::uint64_t>(ds));
  std::size_t replayed = 0;
  {
    std::lock_guard lock(ds->mu);
    ds->att = std::move(a);
    ++ds->att_generation;
    ds->pending_results.clear();  // answers for the old region's requests mean nothing here
    // The core may be new (restarted) or may have kept nothing: give it every last known value.
    for (EntityIndex e = 0; e < ds->values.size(); ++e) {
      for (std::size_t i = 0; i < ds->values[e].size(); ++i) {
        if (!ds->values[e][i]) continue;
        (void)ds->write_locked(*ds->att, e, ds->spec.entities[e].components[i].component, *ds->values[e][i]);
        ++replayed;
      }
    }
    ds->online.store(true, std::memory_order_release);
  }
  if (ds->att->polled && !poll_armed) {
    arm(poll_timer.get(), kPollInterval, kPollInterval);
    poll_armed = true;
  }
  spdlog::info("floe-sdk: provider '{}': device '{}' online (handle {:#x}), {} value(s) written", options.name,
               ds->spec.id, grant.handle(), replayed);
  drain(*ds);
}

void ProviderState::detach(DeviceState& ds, bool retire) noexcept {
  if (!ds.att) return;
  if (const auto& b = ds.att->bells) {
    if (auto it = b->slots.find(ds.att->slot); it != b->slots.end() && it->second == &ds) b->slots.erase(it);
  } else {
    epoll_del(ds.att->wake_fd());
  }
  // Before the eventfd closes and the region unmaps (remove() guarantees the bridge is done with both).
  if (ds.att->bridge != nullptr) ds.att->bridge->remove(ds.att->tx.header().futex_word);
  if (ds.att->spin && --spinning == 0) epoll_del(spin.get());
  std::unique_ptr<Attachment> old;
  {
    std::lock_guard lock(ds.mu);
    old = std::move(ds.att);
    ds.pending_results.clear();
    ds.online.store(false, std::memory_order_release);
  }
  // `old` unmaps the region and closes the eventfds here, outside the lock (or at the end of
  // process(), if a ring drain of this region may be on the stack).
  if (retire) retired_attachments.push_back(std::move(old));
}

std::string ProviderState::with_last_word(std::string reason) {
  // A core that closes the connection with our messages unread (a refusal at accept: uid, limit)
  // resets it, and the kernel reports the reset (or EPIPE to a send) before the packet the core
  // sent last, which says why: read on, at most twice (the reset, then the packet).
  for (int i = 0; i < 2 && channel; ++i) {
    proto::Envelope env;
    auto fds = channel->receive(env);
    if (fds && env.has_error()) {
      spdlog::error("floe-sdk: provider '{}': floe-core closed the connection: {}", options.name, env.error().message());
      return "closed by floe-core: " + env.error().message();
    }
    if (fds || fds.error().code != ECONNRESET) break;
  }
  return reason;
}

void ProviderState::disconnect(const std::string& reason, bool reconnect) {
  const bool was_connected = connected.exchange(false, std::memory_order_acq_rel);
  if (channel) {
    epoll_del(channel->fd());
    channel.reset();
  }
  outbox.clear();  // a new connection declares everything again
  outbox_bytes = 0;
  want_write = false;
  for (auto& d : devices) detach(*d->state_);
  if (bells) {
    epoll_del(bells->signal.get());
    bells.reset();  // unmapped once the last attachment that rings it is gone
  }
  pending_adds.clear();
  for (auto& [env_id, id] : pending_removes) removals.push_back(id);  // not confirmed: tell the next core
  pending_removes.clear();
  arm(heartbeat_timer.get(), {});
  conn = Conn::kIdle;
  broken = false;
  if (!reconnect) return;
  const auto delay = backoff.next();
  arm(timer.get(), delay);
  spdlog::log(was_connected ? spdlog::level::warn : spdlog::level::info,
              "floe-sdk: provider '{}': {}; reconnecting in {:.1f} s", options.name, reason,
              static_cast<double>(delay.count()) / 1000.0);
}

void ProviderState::drain(DeviceState& ds) {
  for (;;) {
    Attachment* a = ds.att.get();
    if (a == nullptr || a->tx_broken) return;
    auto n = a->tx.drain([&](const ipc::RecordView& view) { handle_record(ds, view); }, 256);
    if (ds.att.get() != a) return;  // the handler's actions replaced the attachment
    if (!n) {
      a->tx_broken = true;
      spdlog::error("floe-sdk: provider '{}': device '{}': tx ring corrupt, no longer read: {}", options.name,
                    ds.spec.id, n.error().to_string());
      return;
    }
    if (*n > 0) continue;
    if (a->polled || a->spin || a->bells) return;  // a doorbell's flag is raised by on_bell()
    // Empty: raise the sleeping flag; if a record raced in meanwhile, drain again.
    if (a->tx.prepare_sleep()) return;
  }
}

Status ProviderState::open_bells(const proto::DoorbellGrant& grant, std::vector<ipc::Fd>& fds) {
  constexpr std::string_view op = "doorbells";
  const std::uint32_t shards = grant.shards();
  if (shards == 0 || shards > ipc::kMaxPacketFds - 2 || fds.size() != 2 + std::size_t{shards}) {
    return logic_error(op, fmt::format("{} shards with {} descriptors", shards, fds.size()));
  }
  auto region = ipc::Region::open(std::move(fds[0]), {.expected_size = static_cast<std::size_t>(grant.size()),
                                                      .require_kind = true, .kind = ipc::RegionKind::kDoorbells});
  if (!region) return tl::unexpected(region.error());
  auto b = std::make_shared<Bells>(std::move(*region));
  auto attached = ipc::doorbell_region_attach({b->region.data(), b->region.size()}, 1 + shards, grant.slots());
  if (!attached) return tl::unexpected(attached.error());
  b->bells = std::move(*attached);
  b->signal = std::move(fds[1]);
  for (std::uint32_t i = 0; i < shards; ++i) b->shard_signals.push_back(std::move(fds[2 + i]));
  ::fcntl(b->signal.get(), F_SETFL, ::fcntl(b->signal.get(), F_GETFL) | O_NONBLOCK);
  epoll_add(b->signal.get(), kTagBell);
  bells = std::move(b);
  on_bell();  // raises the flag: from now on the core signals when we sleep
  return {};
}

void ProviderState::on_bell() {
  const std::shared_ptr<Bells> b = bells;
  if (!b) return;
  // An error: the core closed its end (the connection is going; the socket says so next).
  if (!ipc::eventfd_drain(b->signal.get())) epoll_del(b->signal.get());
  ipc::Doorbell& bell = b->bells[0];
  bell.finish_sleep();
  // Bounded: a core that keeps ringing must not starve the socket and the timers.
  for (int round = 0; round < 64; ++round) {
    bell.take([&](std::uint32_t slot) {
      // By lookup each time: a request handler may remove (detach) a device of this batch.
      if (auto it = b->slots.find(slot); it != b->slots.end()) drain(*it->second);
    });
    if (bells != b) return;  // a handler's action disconnected us
    if (bell.prepare_sleep()) return;
  }
  // More keeps coming: serve the rest of the loop first, then come back (through our own eventfd:
  // the doorbell's pipe is the core's to write).
  bell_again = true;
  ipc::eventfd_signal(wake.get());
}

void ProviderState::handle_record(DeviceState& ds, const ipc::RecordView& view) {
  const std::uint64_t gen = ds.att_generation;
  auto decoded = decode_request(view.type, view.payload);
  if (!decoded) {
    const auto& f = decoded.error();
    if (f.has_id) {
      ds.answer(gen, f.id, f.status, f.message);
    } else {
      spdlog::warn("floe-sdk: device '{}': unreadable tx record: {}", ds.spec.id, f.message);
    }
    return;
  }
  std::size_t pos = 0;
  if (decoded->entity >= ds.spec.entities.size()) {
    ds.answer(gen, decoded->id, RequestStatus::kUnsupported,
              "device '" + ds.spec.id + "' has no entity #" + std::to_string(decoded->entity));
    return;
  }
  if (ds.find(decoded->entity, decoded->component, pos) == nullptr) {
    ds.answer(gen, decoded->id, RequestStatus::kUnsupported,
              "entity '" + ds.spec.entities[decoded->entity].id + "' has no " +
                  std::string(ipc::component_name(decoded->component)));
    return;
  }
  Request request(ds.self->state_, gen, std::move(*decoded));
  if (!handler) {
    request.fail("provider '" + options.name + "' accepts no requests", RequestStatus::kUnsupported);
    return;
  }
  try {
    handler(request);
  } catch (const std::exception& e) {
    if (!request.answered()) request.fail(std::string("provider error: ") + e.what());
  }
}

DeviceState* ProviderState::find_device(std::string_view id) noexcept {
  for (auto& d : devices) {
    if (d->state_->spec.id == id) return d->state_.get();
  }
  return nullptr;
}

}  // namespace detail

// ---- Device --------------------------------------------------------------------------------------

Device::Device(std::shared_ptr<detail::DeviceState> state) noexcept : state_(std::move(state)) {}
Device::~Device() = default;
const std::string& Device::id() const noexcept { return state_->spec.id; }
const DeviceSpec& Device::spec() const noexcept { return state_->spec; }
bool Device::online() const noexcept { return state_->online.load(std::memory_order_acquire); }
bool Device::available() const noexcept { return state_->available.load(std::memory_order_acquire); }

void Device::set_available(bool available, std::string_view reason) noexcept {
  {
    std::lock_guard lock(state_->mu);
    try {
      state_->availability_reason.assign(reason.substr(0, 512));
    } catch (const std::bad_alloc&) {
      state_->availability_reason.clear();
    }
    state_->available.store(available, std::memory_order_release);
  }
  // The provider thread sends it (only it writes the socket): wake it.
  state_->availability_dirty.store(true, std::memory_order_release);
  if (auto p = state_->provider.lock(); p && p->wake) ipc::eventfd_signal(p->wake.get());
}

std::optional<EntityIndex> Device::entity(std::string_view entity_id) const noexcept {
  // A scan, not entity_index: devices have few entities and this allocates nothing.
  for (EntityIndex i = 0; i < state_->spec.entities.size(); ++i) {
    if (state_->spec.entities[i].id == entity_id) return i;
  }
  return std::nullopt;
}

WriteStatus Device::set(EntityIndex e, Component c, const Value& v) noexcept { return state_->write(e, c, v); }
WriteStatus Device::set(std::string_view id, Component c, const Value& v) noexcept {
  auto e = entity(id);
  return e ? set(*e, c, v) : WriteStatus::kNoSuchEntity;
}
WriteStatus Device::set_text(EntityIndex e, Component c, std::string_view text) noexcept {
  try {
    return state_->write(e, c, std::string(text));
  } catch (const std::bad_alloc&) {
    return WriteStatus::kTooLong;
  }
}
WriteStatus Device::set_text(std::string_view id, Component c, std::string_view text) noexcept {
  auto e = entity(id);
  return e ? set_text(*e, c, text) : WriteStatus::kNoSuchEntity;
}
WriteStatus Device::set_list(EntityIndex e, Component c, std::span<const std::string> items) noexcept {
  try {
    return state_->write(e, c, std::vector<std::string>(items.begin(), items.end()));
  } catch (const std::bad_alloc&) {
    return WriteStatus::kTooLong;
  }
}
WriteStatus Device::set_list(std::string_view id, Component c, std::span<const std::string> items) noexcept {
  auto e = entity(id);
  return e ? set_list(*e, c, items) : WriteStatus::kNoSuchEntity;
}

std::optional<Value> Device::value(EntityIndex e, Component c) const {
  std::size_t pos = 0;
  if (state_->find(e, c, pos) == nullptr) return std::nullopt;
  std::lock_guard lock(state_->mu);
  const auto& slot = state_->values[e][pos];
  if (!slot) return std::nullopt;
  if (const auto* v = std::get_if<Value>(&*slot)) return *v;
  return std::nullopt;
}

// ---- Request -------------------------------------------------------------------------------------

Request::Request(std::shared_ptr<detail::DeviceState> device, std::uint64_t session, DecodedRequest decoded)
    : device_(std::move(device)), owner_(device_->weak_self.lock()), session_(session), id_(decoded.id),
      entity_(decoded.entity), component_(decoded.component), value_(std::move(decoded.value)), answered_(false) {}

Request::Request(Request&& o) noexcept
    : device_(std::move(o.device_)), owner_(std::move(o.owner_)), session_(o.session_), id_(o.id_),
      entity_(o.entity_), component_(o.component_),
      value_(std::move(o.value_)), answered_(std::exchange(o.answered_, true)) {}

Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    if (!answered_) answer(RequestStatus::kFailed, "request dropped unanswered by the provider");
    device_ = std::move(o.device_);
    owner_ = std::move(o.owner_);
    session_ = o.session_;
    id_ = o.id_;
    entity_ = o.entity_;
    component_ = o.component_;
    value_ = std::move(o.value_);
    answered_ = std::exchange(o.answered_, true);
  }
  return *this;
}

Request::~Request() {
  if (!answered_) answer(RequestStatus::kFailed, "request dropped unanswered by the provider");
}

Device& Request::device() const noexcept { return *owner_; }
const std::string& Request::entity_id() const noexcept { return device_->spec.entities[entity_].id; }

void Request::succeed() noexcept { answer(RequestStatus::kOk, {}); }
void Request::fail(std::string_view reason, RequestStatus status) noexcept {
  answer(status == RequestStatus::kOk ? RequestStatus::kFailed : status, reason);
}

void Request::answer(RequestStatus status, std::string_view message) noexcept {
  if (answered_ || !device_) return;
  answered_ = true;
  device_->answer(session_, id_, status, message);
}

// ---- Provider ------------------------------------------------------------------------------------

Provider::Provider(ProviderOptions options) : state_(std::make_shared<detail::ProviderState>(std::move(options))) {
  state_->init();
  if (state_->init_error) spdlog::error("floe-sdk: {}", state_->init_error->to_string());
}

Provider::~Provider() {
  state_->disconnect("provider shutting down", /*reconnect=*/false);
}

Result<std::reference_wrapper<Device>> Provider::try_add_device(DeviceSpec spec) {
  const std::string op = "sdk.add_device";
  if (spec.id.empty()) return logic_error(op, "a device needs an id");
  if (state_->find_device(spec.id) != nullptr) return logic_error(op, "device '" + spec.id + "' is declared twice");
  // The same checks the core's layout makes, so a bad schema fails here, not at the core.
  ipc::TreeSchema schema;
  auto st = std::make_shared<detail::DeviceState>();
  for (EntityIndex i = 0; i < spec.entities.size(); ++i) {
    const auto& e = spec.entities[i];
    if (e.id.empty()) return logic_error(op, "device '" + spec.id + "': entity #" + std::to_string(i) + " has no id");
    if (!st->entity_index.emplace(e.id, i).second) {
      return logic_error(op, "device '" + spec.id + "': entity '" + e.id + "' is declared twice");
    }
    ipc::EntityDecl decl;
    for (const auto& c : e.components) decl.components.push_back({.component = c.component, .max_bytes = c.max_bytes});
    schema.entities.push_back(std::move(decl));
  }
  if (auto layout = ipc::TreeLayout::compute(schema); !layout) {
    return logic_error(op, "device '" + spec.id + "': " + layout.error().message);
  }
  st->values.resize(spec.entities.size());
  for (std::size_t i = 0; i < spec.entities.size(); ++i) st->values[i].resize(spec.entities[i].components.size());
  st->spec = std::move(spec);
  st->provider = state_;
  auto device = std::shared_ptr<Device>(new Device(st));
  st->self = device.get();
  st->weak_self = device;
  state_->devices.push_back(std::move(device));
  if (state_->conn == detail::ProviderState::Conn::kReady) state_->announce(*st);
  return std::ref(*state_->devices.back());
}

Device& Provider::add_device(DeviceSpec spec) {
  auto d = try_add_device(std::move(spec));
  if (!d) {
    spdlog::critical("floe-sdk: {}", d.error().to_string());
    std::abort();
  }
  return d->get();
}

Status Provider::remove_device(std::string_view id) { return state_->remove_device(id); }

void Provider::on_request(std::function<void(Request&)> handler) { state_->handler = std::move(handler); }

Status Provider::run() {
  if (state_->init_error) return tl::unexpected(*state_->init_error);
  auto loop = ipc::EventLoop::create({.backend = state_->options.backend});
  if (!loop) return tl::unexpected(std::move(loop).error());
  std::optional<Error> failure;
  auto watch = (*loop)->watch_readable(state_->epoll.get(), [&] {
    if (auto s = state_->process(); !s) {
      failure = s.error();
      (*loop)->stop();
    }
  });
  if (!watch) return tl::unexpected(std::move(watch).error());
  state_->loop.store(loop->get(), std::memory_order_release);
  // A stop() before this point left its flag: honour it (it also signalled the wake fd, so the
  // loop's first iteration runs process(), which stops the loop).
  auto ran = (*loop)->run();
  state_->loop.store(nullptr, std::memory_order_release);
  state_->stop_requested.store(false, std::memory_order_relaxed);
  (*loop)->cancel(*watch);
  if (failure) return tl::unexpected(*failure);
  return ran;
}

void Provider::stop() noexcept {
  // Only the flag and the wake fd, both owned by the provider: the loop itself is stopped by its
  // own thread in process(). Touching the loop here raced with run() destroying it (TSan saw
  // close() of the loop's fd against this thread's write).
  state_->stop_requested.store(true, std::memory_order_release);
  if (state_->wake) ipc::eventfd_signal(state_->wake.get());
}

int Provider::fd() const noexcept { return state_->init_error ? -1 : state_->epoll.get(); }
Status Provider::process() { return state_->process(); }
bool Provider::connected() const noexcept { return state_->connected.load(std::memory_order_acquire); }
const std::string& Provider::socket_path() const noexcept { return state_->socket_path; }

}  // namespace floe::sdk
