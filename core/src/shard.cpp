// Shards: one io_uring loop per worker thread, owning the rings of the devices assigned to it.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "daemon_internal.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/text.hpp"

namespace floe::core::detail {

// ---- TaskLoop -----------------------------------------------------------------------------------

Status TaskLoop::init(ipc::LoopBackend backend) {
  auto loop = ipc::EventLoop::create({.backend = backend});
  if (!loop) return tl::unexpected(loop.error());
  loop_ = std::move(*loop);
  auto efd = ipc::make_eventfd(/*nonblocking=*/true);
  if (!efd) return tl::unexpected(efd.error());
  wake_ = std::move(*efd);
  auto w = loop_->watch_eventfd(wake_.get(), [this](std::uint64_t) { run_tasks(); });
  if (!w) return tl::unexpected(w.error());
  return {};
}

void TaskLoop::post(std::function<void()> task) {
  auto* t = new std::function<void()>(std::move(task));
  // SYNC(task-queue): the queue's push (release) pairs with pop (acquire) in run_tasks: the task's
  // captures are visible to the loop thread.
  while (!queue_.push(t)) std::this_thread::yield();
  ipc::eventfd_signal(wake_.get());
}

void TaskLoop::run_tasks() {
  std::function<void()>* t = nullptr;
  while (queue_.pop(t)) {
    std::unique_ptr<std::function<void()>> owned(t);
    (*owned)();
  }
}

TaskLoop::~TaskLoop() {
  std::function<void()>* t = nullptr;
  while (queue_.pop(t)) delete t;
}

// ---- PendingTable -------------------------------------------------------------------------------

void PendingTable::add(std::uint64_t request_id, DeviceId device, Callback callback) {
  Stripe& st = stripe(request_id);
  std::lock_guard lock(st.mu);
  st.entries[request_id] = Entry{device, std::move(callback)};
}

bool PendingTable::complete(std::uint64_t request_id, DeviceId from, Outcome outcome) {
  Stripe& st = stripe(request_id);
  std::lock_guard lock(st.mu);
  auto it = st.entries.find(request_id);
  if (it == st.entries.end() || !(it->second.device == from)) return false;
  it->second.callback(std::move(outcome));
  st.entries.erase(it);
  return true;
}

void PendingTable::fail_device(DeviceId device, const Outcome& outcome) {
  for (Stripe& st : stripes_) {
    std::lock_guard lock(st.mu);
    for (auto it = st.entries.begin(); it != st.entries.end();) {
      if (it->second.device == device) {
        it->second.callback(Outcome(outcome));
        it = st.entries.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void PendingTable::fail_all(const Outcome& outcome) {
  for (Stripe& st : stripes_) {
    std::lock_guard lock(st.mu);
    for (auto& [id, e] : st.entries) e.callback(Outcome(outcome));
    st.entries.clear();
  }
}

bool PendingTable::drop(std::uint64_t request_id) {
  Stripe& st = stripe(request_id);
  std::lock_guard lock(st.mu);
  return st.entries.erase(request_id) != 0;
}

bool PendingTable::forget(std::uint64_t request_id) {
  Stripe& st = stripe(request_id);
  std::lock_guard lock(st.mu);
  auto it = st.entries.find(request_id);
  if (it == st.entries.end()) return false;
  // The waiter gave up. Its callback still runs, with TIMEOUT: every request is answered exactly
  // once (a future left without a value once terminated floe-core here).
  it->second.callback({proto::ERROR_CODE_TIMEOUT, "the provider did not answer in time"});
  st.entries.erase(it);
  return true;
}

// ---- Shard --------------------------------------------------------------------------------------

struct Shard::Attached {
  DeviceId device;
  std::shared_ptr<ipc::Region> region;
  ipc::NotifyMode mode = ipc::NotifyMode::kEventfd;
  ipc::Fd tx_signal;  // our signal pipe ends (without doorbells); tx_signal closes only after `port`
  ipc::Fd rx_signal;
  std::shared_ptr<ProviderBells> bells;  // with doorbells: released only after `port` is closed
  std::uint32_t slot = 0;
  RxBell* rx_bell = nullptr;  // with doorbells: the shard's side of the connection's doorbell
  std::uint64_t owner = 0;    // the provider session the rings were granted to
  std::uint64_t serial = 0;   // this attachment, among the shard's
  bool again = false;         // on the shard's come-back list
  std::shared_ptr<TxPort> port;  // also in Shard::ports_ while attached
  std::optional<ipc::RingConsumer> rx;
  std::optional<WatchFeed> feed;
  ipc::WatchId watch = 0;
  bool dead = false;  // corrupt: waiting for the posted detach
  // kFutex: a thread that sleeps on the rx ring's futex word and turns each wake into a signal
  // of bridge_eventfd, which the loop watches (an event loop cannot block in FUTEX_WAIT itself).
  // An eventfd of our own: no provider holds it, so its writes never block.
  ipc::Fd bridge_eventfd;
  std::thread futex_bridge;
  std::atomic<bool> bridge_stop{false};

  ~Attached() {
    if (port) close_port(*port);
    if (!futex_bridge.joinable()) return;
    bridge_stop.store(true, std::memory_order_release);
    (void)ipc::futex_wake(futex_word(), 1);
    futex_bridge.join();
  }
  [[nodiscard]] const std::uint32_t* futex_word() const noexcept {
    return reinterpret_cast<const std::uint32_t*>(&rx->header().futex_word);
  }
};

/// This shard's doorbell of one provider connection, from its first device attached here until the
/// connection goes (forget_bells).
struct Shard::RxBell {
  std::shared_ptr<ProviderBells> owner;
  ipc::Doorbell* bell = nullptr;  // owner->shard(index_)
  ipc::WatchId watch = 0;         // on owner->shard_signals[index_]
  std::unordered_map<std::uint32_t, Attached*> slots;  // the provider's bits for other slots are ignored
  std::vector<std::uint32_t> again;  // slots drained up to the budget: looked at again next round
  std::vector<std::uint32_t> scratch;
  bool queued = false;  // on the shard's come-back list
};

namespace {
constexpr std::size_t kDrainBudget = 1024;  // records per wakeup: a flooding provider cannot starve the loop

// The futex bridge's loop. `seen` must be read before the shard first raises the sleeping flag
// (so by the caller, not by the new thread, which may start late): a bump of the word (the
// producer's wake) that happens after it was read makes FUTEX_WAIT return at once, so none is
// missed. The timeout only bounds how long a stop request can go unnoticed if its wake raced the wait.
void run_futex_bridge(const std::atomic<std::uint32_t>& word, std::uint32_t seen, const std::atomic<bool>& stop,
                      int eventfd) {
  name_thread("floe-futex");
  while (!stop.load(std::memory_order_acquire)) {
    ipc::futex_wait(reinterpret_cast<const std::uint32_t*>(&word), seen, std::chrono::milliseconds(200));
    const std::uint32_t now = word.load(std::memory_order_acquire);
    if (now != seen) {
      seen = now;
      ipc::eventfd_signal(eventfd);
    }
  }
}
}  // namespace

Shard::Shard(Core& core, unsigned index) : core_(core), index_(index) {}
Shard::~Shard() { stop_and_join(); }

Status Shard::start(ipc::LoopBackend backend) {
  FLOE_TRY(tasks_.init(backend));
  auto again = ipc::make_eventfd(/*nonblocking=*/true);
  if (!again) return tl::unexpected(again.error());
  again_fd_ = std::move(*again);
  auto aw = tasks_.loop().watch_eventfd(again_fd_.get(), [this](std::uint64_t) { on_again(); });
  if (!aw) return tl::unexpected(aw.error());
  if (core_.config.notify == ipc::NotifyMode::kPoll) {
    // Poll-mode producers never signal: look at every ring of this shard on a fixed interval.
    auto t = tasks_.loop().add_timer(core_.config.poll_interval, true, [this] {
      for (auto& [key, d] : devices_) on_rx(*d);
    });
    if (!t) return tl::unexpected(t.error());
  }
  thread_ = std::thread([this] {
    name_thread(fmt::format("floe-shard{}", index_));
    auto r = tasks_.loop().run();
    if (!r) spdlog::error("shard {}: event loop failed: {}", index_, r.error().to_string());
    // Teardown on the loop's own thread: cancel every watch before its eventfd closes.
    tasks_.run_tasks();
    for (auto& [key, d] : devices_) tasks_.loop().cancel(d->watch);
    for (auto& [owner, b] : bells_) tasks_.loop().cancel(b->watch);
    {
      std::lock_guard lock(ports_mu_);
      ports_.clear();
    }
    devices_.clear();
    bells_.clear();
  });
  return {};
}

void Shard::stop_and_join() {
  if (!thread_.joinable()) return;
  tasks_.loop().stop();
  thread_.join();
}

Status Shard::attach(AttachArgs args) {
  return tasks_.call<Status>([this, &args] { return attach_here(args); });
}

void Shard::detach(DeviceId device) {
  tasks_.post([this, key = key_of(device)] { detach_here(key); });
}

std::shared_ptr<Shard::TxPort> Shard::port_of(std::uint64_t key) {
  std::lock_guard lock(ports_mu_);
  auto it = ports_.find(key);
  return it == ports_.end() ? nullptr : it->second;
}

void Shard::close_port(TxPort& port) {
  std::lock_guard lock(port.mu);
  port.tx.reset();
}

Status Shard::attach_here(AttachArgs& args) {
  const std::uint64_t key = key_of(args.device);
  detach_here(key);  // a stale attachment of the same device (should not happen; be safe)
  auto d = std::make_unique<Attached>();
  d->device = args.device;
  d->owner = args.owner;
  d->serial = ++attachments_;
  d->region = args.region;
  d->mode = args.options.notify;
  auto parts = ipc::device_region_attach({args.region->data(), args.region->size()});
  if (!parts) return tl::unexpected(parts.error());
  if (args.reinit_rings) {
    // The previous provider is gone; whatever it left in the rings is meaningless to the new one.
    const ipc::RingOptions tx{.capacity = args.options.tx_capacity, .notify = args.options.notify};
    const ipc::RingOptions rx{.capacity = args.options.rx_capacity, .notify = args.options.notify};
    FLOE_TRY(ipc::ring_init(parts->tx, tx));
    FLOE_TRY(ipc::ring_init(parts->rx, rx));
    args.region->header_mut().generation.fetch_add(1, std::memory_order_relaxed);
  }
  ProviderBells* bells = args.bells.get();
  const int tx_fd = bells != nullptr ? bells->provider_signal.get() : args.tx_signal.get();
  const int rx_fd = bells != nullptr ? bells->shard_signals[index_].get() : args.rx_signal.get();
  auto tx = ipc::RingProducer::attach(parts->tx, tx_fd);
  if (!tx) return tl::unexpected(tx.error());
  auto rx = ipc::RingConsumer::attach(parts->rx, rx_fd);
  if (!rx) return tl::unexpected(rx.error());
  // A provider that declares its device again may still have the region mapped and rewrite the
  // headers while they are initialised: a ring in another notify mode (spin or poll would keep
  // this shard from ever sleeping) or of another size than the core's is refused.
  if (tx->mode() != args.options.notify || rx->mode() != args.options.notify ||
      tx->capacity() != args.options.tx_capacity || rx->capacity() != args.options.rx_capacity) {
    return logic_error("shard.attach",
                       fmt::format("the device's rings changed under the core (notify modes {} / {}, capacities {} / {}; "
                                   "configured {}, {} / {})",
                                   ipc::to_string(tx->mode()), ipc::to_string(rx->mode()), tx->capacity(), rx->capacity(),
                                   ipc::to_string(args.options.notify), args.options.tx_capacity,
                                   args.options.rx_capacity));
  }
  if (bells != nullptr) tx->use_doorbell(&bells->provider(), args.slot, tx_fd);
  // Not looked up in the snapshot: a new device is attached before the snapshot that shows it.
  auto feed = core_.hub.attach(args.device, args.reader, args.region);
  d->port = std::make_shared<TxPort>();
  d->port->tx.emplace(std::move(*tx));
  d->rx.emplace(std::move(*rx));
  d->feed.emplace(std::move(feed));
  d->tx_signal = std::move(args.tx_signal);
  d->rx_signal = std::move(args.rx_signal);
  Attached* raw = d.get();
  int rx_watched = raw->rx_signal.get();
  if (args.options.notify == ipc::NotifyMode::kFutex) {
    auto bridge_fd = ipc::make_eventfd(/*nonblocking=*/true);
    if (!bridge_fd) return tl::unexpected(bridge_fd.error());
    raw->bridge_eventfd = std::move(*bridge_fd);
    rx_watched = raw->bridge_eventfd.get();
    const auto& word = raw->rx->header().futex_word;
    // SYNC(futex-gen): acquire pairs with the producer's release bump in RingProducer::wake_consumer.
    const std::uint32_t seen = word.load(std::memory_order_acquire);
    raw->futex_bridge = std::thread(run_futex_bridge, std::cref(word), seen, std::cref(raw->bridge_stop),
                                    raw->bridge_eventfd.get());
  }
  if (bells != nullptr) {
    auto& b = bells_[bells];
    if (!b) {
      auto made = std::make_unique<RxBell>();
      made->owner = args.bells;
      made->bell = &bells->shard(index_);
      auto w = tasks_.loop().watch_eventfd(rx_fd, [this, rb = made.get()](std::uint64_t) { on_bell(*rb); });
      if (!w) {
        bells_.erase(bells);
        return tl::unexpected(w.error());
      }
      made->watch = *w;
      b = std::move(made);
    }
    b->slots[args.slot] = raw;
    raw->rx_bell = b.get();
    raw->bells = std::move(args.bells);
    raw->slot = args.slot;
  } else {
    auto w = tasks_.loop().watch_eventfd(rx_watched, [this, raw](std::uint64_t) { on_rx(*raw); });
    if (!w) return tl::unexpected(w.error());
    d->watch = *w;
  }
  {
    std::lock_guard lock(ports_mu_);
    ports_[key] = d->port;
  }
  devices_[key] = std::move(d);
  if (raw->rx_bell != nullptr) {
    // One look at the doorbell: it takes what is pending, then raises the flag the provider reads.
    come_back(*raw->rx_bell);
    return {};
  }
  // The provider signals only a sleeping consumer: announce that we sleep (or drain what came).
  // Spin and poll never sleep: prepare_sleep is false and this first drain starts them.
  if (!raw->rx->prepare_sleep()) come_back(*raw);
  return {};
}

void Shard::detach_here(std::uint64_t key, std::uint64_t serial) {
  auto it = devices_.find(key);
  if (it == devices_.end() || (serial != 0 && it->second->serial != serial)) return;
  tasks_.loop().cancel(it->second->watch);
  if (RxBell* b = it->second->rx_bell; b != nullptr) {
    // The doorbell's watch stays until the connection goes (forget_bells): watching the same
    // eventfd anew while a cancelled io_uring read of it may still be armed could lose a signal.
    if (auto s = b->slots.find(it->second->slot); s != b->slots.end() && s->second == it->second.get()) {
      b->slots.erase(s);
    }
  }
  {
    std::lock_guard lock(ports_mu_);
    ports_.erase(key);
  }
  const DeviceId device = it->second->device;
  devices_.erase(it);  // ~Attached closes the port before the signals and the mapping go
  // Whoever asked for the detach failed the device's pending requests already, but a set that
  // passed its online check before that could still be added and published to the ring until the
  // port closed just now: nobody will answer it. Fail those too, rather than let them time out.
  // A set submitted from now on finds the port gone and is answered OFFLINE by submit().
  core_.pending.fail_device(device, {proto::ERROR_CODE_OFFLINE, "the device is offline"});
}

void Shard::forget_bells(std::shared_ptr<ProviderBells> bells) {
  tasks_.post([this, bells = std::move(bells)] {
    const auto it = bells_.find(bells.get());
    if (it == bells_.end()) return;
    // Its devices were detached before (the same queue, in order); a device still listed (a
    // detach still to come) keeps its own reference and no longer hears this doorbell.
    for (auto& [slot, d] : it->second->slots) d->rx_bell = nullptr;
    tasks_.loop().cancel(it->second->watch);  // before the last holder of the eventfds lets go
    bells_.erase(it);
  });
}

void Shard::submit(const SetTask& task) {
  const std::shared_ptr<TxPort> port = port_of(key_of(task.device));
  std::unique_lock lock = port ? std::unique_lock(port->mu) : std::unique_lock<std::mutex>();
  if (!port || !port->tx) {
    core_.pending.complete(task.request_id, task.device, {proto::ERROR_CODE_OFFLINE, "the device is offline"});
    return;
  }
  ipc::RingProducer& tx = *port->tx;
  ipc::SetRequest req{};
  req.request_id = task.request_id;
  req.entity = task.entity;
  req.component = ipc::to_id(task.component);
  req.value_bits = task.text ? task.text_value.size() : task.bits;
  const std::size_t length = sizeof req + (task.text ? task.text_value.size() : 0);
  std::byte* dst = length <= tx.max_payload()
                       ? tx.try_reserve(task.text ? ipc::kSetTextRequest : ipc::kSetRequest,
                                        static_cast<std::uint32_t>(length))
                       : nullptr;
  if (dst == nullptr) {
    core_.pending.complete(task.request_id, task.device,
                           {proto::ERROR_CODE_LIMIT, length > tx.max_payload()
                                                         ? "the value is too large for the device's request ring"
                                                         : "the device's request ring is full (provider not keeping up)"});
    return;
  }
  std::memcpy(dst, &req, sizeof req);
  if (task.text) std::memcpy(dst + sizeof req, task.text_value.data(), task.text_value.size());
  tx.publish();
}

// Coming back goes through a private eventfd, never through one a provider holds: a provider can
// make its copy blocking (the file description is shared) and fill the counter, and a write to it
// would then block this thread and every device on it.
void Shard::come_back(Attached& d) {
  if (d.again) return;
  d.again = true;
  again_devices_.push_back(key_of(d.device));
  ipc::eventfd_signal(again_fd_.get());
}

void Shard::come_back(RxBell& b) {
  if (b.queued) return;
  b.queued = true;
  again_bells_.push_back(b.owner.get());
  ipc::eventfd_signal(again_fd_.get());
}

void Shard::on_again() {
  // One round each, then back to the loop: what comes back during it waits for the next wakeup.
  // The lists swap with kept ones (cleared after), so a round allocates nothing once warm.
  std::vector<std::uint64_t>& devices = again_devices_now_;
  std::vector<const ProviderBells*>& bells = again_bells_now_;
  devices.swap(again_devices_);
  bells.swap(again_bells_);
  for (const std::uint64_t key : devices) {
    if (auto it = devices_.find(key); it != devices_.end()) {
      it->second->again = false;
      on_rx(*it->second);
    }
  }
  for (const ProviderBells* key : bells) {
    if (auto it = bells_.find(key); it != bells_.end()) {
      it->second->queued = false;
      on_bell(*it->second);
    }
  }
  devices.clear();
  bells.clear();
}

void Shard::on_rx(Attached& d) {
  if (d.dead) return;
  d.rx->finish_sleep();
  const Drained drained = drain_rx(d);
  if (drained == Drained::kDead) {
    core_.hub.flush();
    return;
  }
  if (drained == Drained::kMore) {
    // More to do: come back after the loop has served everything else that is ready.
    come_back(d);
  } else if (d.mode == ipc::NotifyMode::kSpin) {
    // A spin ring's consumer never sleeps: the loop keeps coming back, serving its other fds
    // between rounds (this is the strategy that burns a core).
    come_back(d);
  } else if (d.mode != ipc::NotifyMode::kPoll && !d.rx->prepare_sleep()) {
    // Data raced in while the sleeping flag went up: drain again. (kPoll waits for the timer.)
    come_back(d);
  }
  core_.hub.flush();
}

void Shard::on_bell(RxBell& b) {
  b.bell->finish_sleep();
  b.scratch.swap(b.again);
  b.again.clear();
  auto visit = [&](std::uint32_t slot) {
    const auto it = b.slots.find(slot);
    if (it == b.slots.end()) return;  // not a device of this connection on this shard (or gone)
    if (drain_rx(*it->second) == Drained::kMore) b.again.push_back(slot);
  };
  for (const std::uint32_t slot : b.scratch) visit(slot);
  b.bell->take(visit);
  // Come back after the loop has served everything else that is ready, if a ring had more than
  // the budget or a bit was set while the flag went up.
  if (!b.again.empty() || !b.bell->prepare_sleep()) come_back(b);
  core_.hub.flush();
}

Shard::Drained Shard::drain_rx(Attached& d) {
  if (d.dead) return Drained::kDead;
  ipc::RingConsumer& rx = *d.rx;
  changes_.clear();
  auto drained = rx.drain(
      [&](const ipc::RecordView& v) {
        if (v.type == ipc::kChangeRecord) {
          if (auto rec = decode_change_record(v.payload)) changes_.push_back(*rec);
        } else if (v.type == ipc::kRequestResult) {
          auto res = ipc::read_record<ipc::RequestResult>(v.payload);
          if (!res) return;
          const std::size_t avail = v.payload.size() - sizeof(ipc::RequestResult);
          // It goes into the client's answer (a protobuf string): valid UTF-8, cut at a character
          // at 1,024 bytes. Copied out of the ring first: the provider may rewrite the bytes
          // between the check and the copy, so only a private copy can be made valid.
          constexpr std::size_t kMaxMessage = 1024;
          const std::size_t n = std::min({std::size_t{res->message_length}, avail, kMaxMessage});
          std::string raw(n, '\0');
          std::memcpy(raw.data(), v.payload.data() + sizeof(ipc::RequestResult), n);
          std::string msg = ipc::valid_utf8(raw, kMaxMessage);
          Outcome out;
          switch (static_cast<ipc::RequestStatus>(res->status)) {
            case ipc::RequestStatus::kOk: break;
            case ipc::RequestStatus::kUnreachable:
              out = {proto::ERROR_CODE_OFFLINE, msg.empty() ? "the physical device is unreachable" : msg};
              break;
            default: out = {proto::ERROR_CODE_PROVIDER, msg.empty() ? "the provider reported a failure" : msg}; break;
          }
          core_.pending.complete(res->request_id, d.device, std::move(out));
        }
        // Unknown record types are ignored: a newer provider may send kinds this core predates.
      },
      kDrainBudget);
  if (!changes_.empty()) d.feed->on_change(changes_);
  // SYNC(overflow): acquire pairs with the producer's release store of the flag: the tree writes
  // the lost records announced are visible to the rescan.
  if (rx.header().overflow.exchange(0, std::memory_order_acq_rel) != 0) d.feed->on_overflow();
  if (!drained) {
    d.dead = true;
    close_port(*d.port);  // requests from now on fail as offline
    spdlog::error("device ring corrupt (rx of device {}:{}): {}; disconnecting its provider", d.device.index,
                  d.device.generation, drained.error().to_string());
    const std::uint64_t key = key_of(d.device);
    // This attachment only, and its provider only: by the time these run, the main thread may
    // have closed that provider and granted the device to another (same key, a new attachment).
    tasks_.post([this, key, serial = d.serial] { detach_here(key, serial); });
    if (core_.on_corrupt) core_.on_corrupt(d.device, d.owner, drained.error().message);
    return Drained::kDead;
  }
  return *drained == kDrainBudget ? Drained::kMore : Drained::kIdle;
}

}  // namespace floe::core::detail
