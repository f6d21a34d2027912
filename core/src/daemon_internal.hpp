// floe-core internals shared by daemon.cpp, shard.cpp and client_session.cpp.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <span>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/lockfree/queue.hpp>

#include "client.pb.h"
#include "floe/core/config.hpp"
#include "floe/core/limits.hpp"
#include "floe/core/registry.hpp"
#include "floe/core/state_file.hpp"
#include "floe/core/watch.hpp"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/region.hpp"
#include "management.pb.h"

namespace floe::core::detail {

/// Names the calling thread (`top -H`, `perf`, /proc/<pid>/task/*/comm; the kernel keeps 15 bytes).
inline void name_thread(const std::string& name) noexcept {
  (void)::pthread_setname_np(::pthread_self(), name.substr(0, 15).c_str());
}

[[nodiscard]] inline std::uint64_t key_of(DeviceId id) noexcept {
  return (std::uint64_t{id.index} << 32) | id.generation;
}

/// An event loop plus a multi-producer task queue woken through an eventfd: the only way work
/// crosses from one thread to a loop's thread.
class TaskLoop {
 public:
  [[nodiscard]] Status init(ipc::LoopBackend backend);
  /// Any thread. Runs `task` on the loop's thread, in order with other posts from the same thread.
  void post(std::function<void()> task);
  /// Any thread: post and wait for the result.
  template <typename R>
  R call(std::function<R()> fn) {
    std::promise<R> p;
    auto f = p.get_future();
    post([&] {
      if constexpr (std::is_void_v<R>) {
        fn();
        p.set_value();
      } else {
        p.set_value(fn());
      }
    });
    return f.get();
  }
  [[nodiscard]] ipc::EventLoop& loop() noexcept { return *loop_; }
  /// Runs every queued task (loop thread; also used at teardown after run() returned).
  void run_tasks();
  ~TaskLoop();

 private:
  std::unique_ptr<ipc::EventLoop> loop_;
  boost::lockfree::queue<std::function<void()>*> queue_{256};
  ipc::Fd wake_;
};

/// How a request ended, as the client sees it.
struct Outcome {
  proto::ErrorCode code = proto::ERROR_CODE_UNSPECIFIED;  // UNSPECIFIED: success
  std::string message;
  [[nodiscard]] bool ok() const noexcept { return code == proto::ERROR_CODE_UNSPECIFIED; }
};

/// Requests waiting for a provider's RequestResult. Any thread. Striped by request id: the
/// callbacks run under their stripe's lock (and send to a client), so one global lock would make
/// every shard and client loop wait for each other's sends.
class PendingTable {
 public:
  /// Called exactly once with the outcome, on the completing thread, with its stripe's lock held:
  /// so once drop() or forget() returns, the callback of that request is not running and never will.
  using Callback = std::function<void(Outcome&&)>;
  struct Entry {
    DeviceId device;
    Callback callback;
  };
  /// Registers a request for `device` whose outcome goes to `callback` (see Callback).
  void add(std::uint64_t request_id, DeviceId device, Callback callback);
  /// Completes `request_id` if it is pending for `from` (a provider cannot answer another
  /// device's requests). Returns false for unknown ids.
  bool complete(std::uint64_t request_id, DeviceId from, Outcome outcome);
  /// Completes every request of `device`.
  void fail_device(DeviceId device, const Outcome& outcome);
  void fail_all(const Outcome& outcome);
  /// The waiter gave up: completes the request with TIMEOUT. False if it was no longer pending.
  bool forget(std::uint64_t request_id);
  /// Removes the request without completing it (its waiter is going away). False if not pending.
  bool drop(std::uint64_t request_id);

 private:
  static constexpr std::size_t kStripes = 64;
  struct alignas(64) Stripe {
    std::mutex mu;
    std::unordered_map<std::uint64_t, Entry> entries;
  };
  [[nodiscard]] Stripe& stripe(std::uint64_t request_id) noexcept { return stripes_[request_id % kStripes]; }
  std::array<Stripe, kStripes> stripes_;
};

struct Core;

/// What a shard needs to take over a device's rings.
/// A provider connection's doorbells (floe/ipc/doorbell.hpp, management.proto DoorbellGrant):
/// the provider's, rung by the shards' tx ports, and one per shard, rung by the provider for the
/// rx rings of that shard's devices. Shared by the connection and every device attached with it.
struct ProviderBells {
  explicit ProviderBells(ipc::Region r) noexcept : region(std::move(r)) {}
  ipc::Region region;
  std::vector<ipc::Doorbell> bells;  // [0]: the provider's; [1 + i]: shard i's
  // Our ends of the signal pipes (ipc/notify.hpp): the provider's doorbell is signalled through
  // provider_signal (a write end); shard i's through shard_signals[i] (a read end). The provider
  // holds the other ends, so nothing it does to them can make these block.
  ipc::Fd provider_signal;
  std::vector<ipc::Fd> shard_signals;
  [[nodiscard]] ipc::Doorbell& provider() noexcept { return bells[0]; }
  [[nodiscard]] ipc::Doorbell& shard(unsigned i) noexcept { return bells[1 + i]; }
};

struct AttachArgs {
  DeviceId device;
  std::shared_ptr<ipc::Region> region;
  std::shared_ptr<const ipc::TreeReader> reader;  // the device's tree in `region`
  ipc::DeviceRegionOptions options;
  bool reinit_rings = false;  // a reconnect: the old provider is gone, start both rings afresh
  ipc::Fd tx_signal;  // without doorbells: our ends of the device's signal pipes (write end: tx,
  ipc::Fd rx_signal;  // read end: rx); the provider holds the others
  std::shared_ptr<ProviderBells> bells;  // with doorbells: the connection's, and the device's slot
  std::uint32_t slot = 0;
  std::uint64_t owner = 0;  // the provider session granted the rings (who a corrupt ring blames)
};

/// One SetRequest for a shard to push onto a device's tx ring.
struct SetTask {
  DeviceId device;
  std::uint64_t request_id = 0;
  std::uint32_t entity = 0;
  ipc::Component component{};
  bool text = false;
  std::uint64_t bits = 0;
  std::string text_value;
};

/// One worker thread: an io_uring loop owning the rings of its devices.
class Shard {
 public:
  Shard(Core& core, unsigned index);
  ~Shard();
  [[nodiscard]] Status start(ipc::LoopBackend backend);
  void stop_and_join();

  /// Any thread; waits for the shard. Attaches rings, starts draining rx.
  [[nodiscard]] Status attach(AttachArgs args);
  /// Any thread; asynchronous. Stops draining, closes the eventfds (the region stays mapped in
  /// the registry while the device is known).
  void detach(DeviceId device);
  /// Any thread. Pushes the request onto the device's tx ring from the calling thread (the seed's
  /// "client task writes to the device task": no hop through the shard's loop); completes the
  /// pending request at once if the device is not attached, is being dropped, or its ring is full.
  void submit(const SetTask& task);
  /// Any thread; asynchronous. The provider connection that owns `bells` is gone: stop watching
  /// this shard's doorbell of it (after the detaches of its devices, which were requested first).
  void forget_bells(std::shared_ptr<ProviderBells> bells);
  [[nodiscard]] unsigned index() const noexcept { return index_; }

 private:
  struct Attached;
  struct RxBell;
  enum class Drained : std::uint8_t { kIdle, kMore, kDead };
  /// A device's tx ring as seen by submitters: the producer side is single-threaded, so the
  /// threads that submit (client sessions) take turns under `mu`. `tx` is reset under `mu` when the
  /// device is detached or found corrupt, before the mapping or the eventfd can go away.
  struct TxPort {
    std::mutex mu;
    std::optional<ipc::RingProducer> tx;
  };
  [[nodiscard]] std::shared_ptr<TxPort> port_of(std::uint64_t key);
  static void close_port(TxPort& port);
  Status attach_here(AttachArgs& args);
  /// Detaches the device's attachment; with `serial`, only if it is still that attachment (a
  /// corrupt ring's detach must not take down the next provider's attachment of the device).
  void detach_here(std::uint64_t key, std::uint64_t serial = 0);
  void on_rx(Attached& d);
  /// Drains up to kDrainBudget records of d's rx ring and hands them on (no flag, no flush).
  Drained drain_rx(Attached& d);
  void on_bell(RxBell& b);
  /// Runs on_rx / on_bell again after the loop has served what else is ready.
  void come_back(Attached& d);
  void come_back(RxBell& b);
  void on_again();

  Core& core_;
  unsigned index_;
  ipc::Fd again_fd_;  // private eventfd for come_back(); no provider holds it; outlives the loop
  TaskLoop tasks_;
  std::thread thread_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Attached>> devices_;  // loop thread only
  std::uint64_t attachments_ = 0;  // loop thread only: the serial of the last attachment
  std::unordered_map<const ProviderBells*, std::unique_ptr<RxBell>> bells_;  // loop thread only
  std::vector<std::uint64_t> again_devices_;         // loop thread only
  std::vector<const ProviderBells*> again_bells_;    // loop thread only
  std::vector<std::uint64_t> again_devices_now_;     // on_again's round (kept: no allocation per round)
  std::vector<const ProviderBells*> again_bells_now_;
  std::mutex ports_mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<TxPort>> ports_;  // ports_mu_
  std::vector<ChangeRecord> changes_;  // scratch
};

/// Writes the state file on a thread of its own, coalescing bursts: a provider declaring a
/// thousand devices marks it stale a thousand times, and it is written a few times instead of once
/// per device (each write is O(devices), so that was quadratic: ~20 s of core time for 1,000
/// devices). A write waits a short delay after the first mark, then writes what is current. The
/// destructor writes what is still stale. A SIGKILL can lose the marks of that last delay: providers
/// declare their devices again when they reconnect.
class StateSaver {
 public:
  explicit StateSaver(std::function<void()> write) : write_(std::move(write)) {}
  ~StateSaver();
  StateSaver(const StateSaver&) = delete;
  StateSaver& operator=(const StateSaver&) = delete;
  /// Any thread: the state changed; write it soon.
  void mark();
  /// The state was just written synchronously: nothing is stale.
  void clear();

 private:
  void run();
  std::function<void()> write_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool dirty_ = false;
  bool stop_ = false;
  std::thread thread_;
};

class ClientSession;

/// Everything the daemon's threads share.
struct Core {
  explicit Core(Config c) : config(std::move(c)) {}
  Config config;
  /// The state file's lock (lock_state_file), taken at startup; released after the saver's final
  /// write, since members go in reverse order.
  ipc::Fd state_lock;
  Registry registry;
  WatchHub hub{registry};
  PendingTable pending;
  std::vector<std::unique_ptr<Shard>> shards;
  std::atomic<std::uint64_t> next_request_id{1};
  std::atomic<std::uint64_t> next_session_id{1};
  /// Bytes waiting for clients over all sessions (their outboxes and what their loops took, not
  /// sent yet); limits.max_queued_client_bytes bounds it (ClientSession::admit_locked).
  std::atomic<std::size_t> client_queued_bytes{0};
  TaskLoop main;  // the main thread's loop: sockets, provider sessions, signals

  /// Serialises metadata edits (device lifecycle, groups) and state file writes.
  std::mutex meta_mu;
  std::map<std::string, StoredDevice, std::less<>> meta;  // by device id; groups filled at save

  [[nodiscard]] Shard& shard_of(DeviceId id) { return *shards[id.index % shards.size()]; }
  /// The metadata changed: the state file is written soon by `saver`. meta_mu held.
  void save_state_locked() { saver.mark(); }
  /// Builds the state from `meta` and the registry's groups and writes it now. meta_mu held.
  void write_state_locked();
  /// A shard found a device's ring corrupt: disconnect its provider (posted to the main loop).
  /// A shard found a device's rx ring corrupt: (device, the provider session its rings were
  /// granted to, why). Runs on the shard's thread.
  std::function<void(DeviceId, std::uint64_t, std::string)> on_corrupt;

  /// Last member: stopped (after a final write) before anything its writes read is destroyed.
  StateSaver saver{[this] {
    std::lock_guard lock(meta_mu);
    write_state_locked();
  }};
};

class ClientLoop;

/// A client connection. Served by one ClientLoop's thread, which reads its requests and sends its
/// queued packets; answers and watch events may be sent by whichever thread produces them.
class ClientSession {
 public:
  ClientSession(Core& core, ipc::Channel channel, ipc::PeerCredentials peer);
  ~ClientSession();
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

 private:
  friend class ClientLoop;
  // The loop's side (its thread only).
  /// Registered with `loop`'s epoll: the socket is made non-blocking.
  [[nodiscard]] Status open(ClientLoop& loop);
  /// The socket's readiness: reads one request (so a flooding client takes its turn with the
  /// others) and sends what waits.
  void on_events(std::uint32_t events);
  /// schedule() was called: sends the outbox, takes back room for requests.
  void on_scheduled();
  /// Forgets finished sets and times out the overdue ones; returns the next deadline (max: none).
  std::chrono::steady_clock::time_point reap_sets();
  /// The loop's deadline pass: reap_sets, and a client whose socket has stayed full for
  /// limits.client_stall_timeout is closed. Returns this session's next deadline.
  std::chrono::steady_clock::time_point on_deadline(std::chrono::steady_clock::time_point now);
  [[nodiscard]] bool closing() const noexcept { return closing_; }
  /// Ends the session: drops its sets in flight and its watches (no callback can touch it
  /// afterwards), leaves the epoll set and shuts the socket down.
  void close();
  /// Asks for the readiness this session needs now (requests, room to send) if it changed.
  void update_interest();

  void read_one();
  void handle(const proto::ClientRequest& req);
  void send(const proto::ClientResponse& resp);
  /// Any thread: queues `resp` (see enqueue) as one packet; over one packet, split over several
  /// if the client asked for split answers (Hello.split_answers), else a LIMIT error with a
  /// reason in its place.
  void deliver(const proto::ClientResponse& resp, std::uint64_t watch_id = 0);
  /// Any thread: a set in flight was answered (reap_sets forgets it; wakes a session at its limit).
  void set_finished(std::uint64_t request_id);
  /// Queued in order with every other answer; a fatal one is the last packet: the session closes
  /// once it is sent.
  void send_error(std::uint64_t id, proto::ErrorCode code, const std::string& message, bool fatal = false);
  [[nodiscard]] static std::string error_packet(std::uint64_t id, proto::ErrorCode code, const std::string& message,
                                                bool fatal);
  /// Any thread. `watch_id` != 0 marks a watch event: while it waits in the outbox, a newer event
  /// of the same watch replaces it (an event is the whole current result, so the newest suffices).
  void enqueue(std::string bytes, std::uint64_t watch_id = 0);
  /// The packets of one split answer, kept together: nothing is queued between them.
  void enqueue_parts(std::vector<std::string> parts, std::uint64_t watch_id);
  /// Under outbox_mu_: moves `parts` (one answer) to the end of the outbox, or in place of the
  /// watch's queued event; false if they replaced one (the loop was already told).
  bool queue_locked(std::span<std::string> parts, std::uint64_t watch_id);
  /// Under outbox_mu_: counts `growth` more bytes against the core-wide limit, or, if that is full
  /// and this session would hold more than its share (own_after bytes), refuses them (false).
  bool admit_locked(std::size_t growth, std::size_t own_after);
  /// What one session may hold once the core-wide limit is full: the limit over max_clients.
  [[nodiscard]] std::size_t core_budget_share() const noexcept;
  /// This session's bytes leave the core-wide count (sent, replaced or dropped).
  void release_queued(std::size_t bytes) noexcept;
  /// The loop's thread: admit_locked refused this session: it is closed now (true), its queue freed.
  bool evicted_over_core_budget();
  /// The loop's thread: sends queued packets until done or the socket is full (then waits for
  /// EPOLLOUT; never blocks).
  void flush_outbox();
  void on_set(const proto::ClientRequest& req);
  void on_query(const proto::ClientRequest& req);
  void on_watch(const proto::ClientRequest& req);
  void on_edit_group(const proto::ClientRequest& req);
  /// limits.max_request_bytes and the request token bucket: false if `req` was refused (answered LIMIT).
  bool within_limits(const proto::ClientRequest& req, std::size_t bytes);
  /// A single set's outcome, on the completing thread (usually a shard's): answers the client
  /// straight away, without waking the session's loop.
  void answer_set(std::uint64_t client_id, std::uint64_t request_id, const std::string& entity,
                  std::string_view component, std::chrono::milliseconds timeout, Outcome&& outcome);
  /// A set went in flight until `deadline` (the loop's thread).
  void track_set(std::uint64_t request_id, std::chrono::steady_clock::time_point deadline);

  Core& core_;
  ipc::Channel channel_;
  ipc::PeerCredentials peer_;
  ClientLoop* loop_ = nullptr;  // set by open()
  std::atomic<bool> scheduled_{false};  // in the loop's ready list (ClientLoop::schedule)
  std::mutex outbox_mu_;
  std::vector<std::string> outbox_;
  struct QueuedEvent {
    std::size_t at = 0;     // index of its first packet in outbox_
    std::size_t count = 1;  // its packets (more than one if split)
  };
  std::unordered_map<std::uint64_t, QueuedEvent> queued_event_;  // outbox_mu_: by watch id
  bool outbox_overflow_ = false;
  bool over_core_budget_ = false;  // outbox_mu_: the overflow came from limits.max_queued_client_bytes
  std::size_t outbox_bytes_ = 0;  // outbox_mu_: the bytes of outbox_
  // The bytes of sending_ not sent yet: written by the loop, read by queue_locked (the budget).
  std::atomic<std::size_t> sending_bytes_{0};
  bool flushing_ = false;  // outbox_mu_: the loop holds taken packets not sent yet: direct sends queue
  // The loop's thread only:
  std::vector<std::string> sending_;  // taken from the outbox, sent in order from sending_[sent_]
  std::size_t sent_ = 0;
  bool blocked_ = false;          // the socket was full: waiting for EPOLLOUT
  std::chrono::steady_clock::time_point blocked_since_{};
  std::optional<std::string> final_;  // a fatal error, sent after sending_; then the session closes
  bool close_when_sent_ = false;
  std::uint32_t interest_ = 0;    // the events asked of epoll now
  bool welcomed_ = false;
  std::chrono::steady_clock::time_point hello_deadline_{};  // open() + limits.client_hello_timeout
  std::atomic<bool> split_answers_{false};  // Hello.split_answers; set before any answer is due
  bool closing_ = false;
  bool closed_ = false;
  bool full_ = false;             // kMaxSetsInFlight reached: no requests read until one finishes
  unsigned malformed_in_a_row_ = 0;
  TokenBucket requests_;
  std::uint64_t refused_in_a_row_ = 0;  // by the bucket: logged when it starts and when it ends
  std::atomic<std::uint64_t> refused_answers_{0};  // too big to send (deliver): logged at 1, 2, 4, 8, ...
  std::uint64_t next_watch_id_ = 1;
  std::map<std::uint64_t, WatchHandle> watches_;
  /// Sets in flight, by pending request id: their deadlines. The loop's thread only.
  std::unordered_map<std::uint64_t, std::chrono::steady_clock::time_point> sets_in_flight_;
  std::mutex finished_mu_;
  std::vector<std::uint64_t> finished_sets_;  // finished_mu_: answered, to drop from sets_in_flight_
  bool awaiting_room_ = false;                // finished_mu_: at the in-flight limit, scheduled by set_finished
};

/// One thread serving many client sessions: an epoll loop over their sockets (level-triggered, one
/// request per readiness per session, so every client takes its turn), a ready list other threads
/// put sessions on (schedule), and the sets' deadlines. `client_threads` of them; a new session
/// goes to the one with the fewest. A session's requests are handled on its loop's thread, so a
/// slow request (a big list, a group edit waiting for the metadata lock) delays only that loop.
class ClientLoop {
 public:
  ClientLoop(Core& core, unsigned index) : core_(core), index_(index) {}
  ~ClientLoop();
  ClientLoop(const ClientLoop&) = delete;
  ClientLoop& operator=(const ClientLoop&) = delete;
  [[nodiscard]] Status start();
  /// Closes every session and joins the thread.
  void stop_and_join();
  /// Any thread: serve `session` (counted at once).
  void adopt(std::unique_ptr<ClientSession> session);
  /// Any thread: run `session`'s on_scheduled on the loop soon (once, however often it is asked).
  void schedule(ClientSession& session);
  /// Sessions adopted and not yet closed.
  [[nodiscard]] std::size_t count() const noexcept { return count_.load(std::memory_order_acquire); }
  /// False once the loop has ended (stopped, or failed and closed its sessions): it takes no new ones.
  [[nodiscard]] bool serving() const noexcept { return !ended_.load(std::memory_order_acquire); }

 private:
  friend class ClientSession;
  void run();
  /// The loop's thread: `deadline` is when a session's set times out.
  void note_deadline(std::chrono::steady_clock::time_point deadline) { next_deadline_ = std::min(next_deadline_, deadline); }
  void wake();
  void take_adopted();
  void close_session(ClientSession* session);

  Core& core_;
  unsigned index_;
  ipc::Fd epoll_;
  ipc::Fd wake_;
  std::atomic<bool> wake_pending_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> ended_{false};
  std::atomic<std::size_t> count_{0};
  std::mutex mu_;
  std::vector<std::unique_ptr<ClientSession>> adopted_;  // mu_
  std::vector<ClientSession*> ready_;                     // mu_
  // The loop's thread only:
  std::unordered_map<ClientSession*, std::unique_ptr<ClientSession>> sessions_;
  std::chrono::steady_clock::time_point next_deadline_ = std::chrono::steady_clock::time_point::max();
  std::thread thread_;
};

}  // namespace floe::core::detail
