#include "floe/esphome/provider.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "floe/esphome/mapping.hpp"
#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/tree.hpp"
#include "floe/sdk/backoff.hpp"
#include "floe/sdk/provider.hpp"

namespace floe::esphome {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace pb = floe::esphome::api;

// Connecting and every step before the entity list is complete must make progress within this.
constexpr auto kStepTimeout = 10s;
// A connection that stayed up this long was a good one: the next failure retries after min_ms
// again. Shorter ones (a device that accepts, talks and hangs up, over and over) keep the delay
// growing, so a flapping device is not hammered.
constexpr auto kStableConnection = 10s;
// A device that stops reading gets dropped rather than buffered without bound.
constexpr std::size_t kMaxOutBytes = 1 << 20;
constexpr int kReadRounds = 4;
constexpr std::uint32_t kApiMajor = 1;
constexpr std::uint32_t kApiMinor = 14;
constexpr std::uint64_t kProviderTag = 0;
constexpr std::uint64_t kStopTag = 1;
constexpr std::uint64_t kFirstConnectionTag = 2;
// What one node may list. A real node has tens of entities and a few sub-devices; a device that
// lists without end (or thousands of sub-devices, each a floe device) is dropped with a reason
// before it costs the provider memory, time, or the core's per-provider limits.
constexpr std::size_t kMaxNodeEntities = ipc::kTreeMaxEntities;
constexpr std::size_t kMaxNodeSubDevices = 256;
constexpr std::size_t kMaxListingBytes = std::size_t{4} << 20;

constexpr std::uint16_t id(MsgType t) noexcept { return static_cast<std::uint16_t>(t); }

double seconds(std::chrono::milliseconds d) { return static_cast<double>(d.count()) / 1000.0; }

enum class Phase { kWaiting, kConnecting, kHandshake, kHello, kDeviceInfo, kListing, kLive };

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::kWaiting: return "waiting";
    case Phase::kConnecting: return "connect";
    case Phase::kHandshake: return "the encryption handshake";
    case Phase::kHello: return "Hello";
    case Phase::kDeviceInfo: return "DeviceInfo";
    case Phase::kListing: return "ListEntities";
    case Phase::kLive: return "live";
  }
  return "?";
}

/// One floe device: the node itself or one of its sub-devices.
struct FloeDevice {
  sdk::Device* device = nullptr;
  std::vector<EntityInfo> entities;  // by floe entity index
};

/// A request sent to the device, completed by its next state message for that entity.
struct Pending {
  sdk::Request request;
  std::uint32_t key = 0;
  std::uint32_t device_id = 0;
  Clock::time_point deadline;
  // A boolean set (a Switch on, ...) completes only on a state that reports this value for
  // `component`: a state the device sent before it took the command (and that reached us after
  // it) says the opposite, and must not pass for the answer. Other sets complete on the entity's
  // next state (float rounding and partial light states make their values no exact match).
  ipc::Component component = ipc::Component::kNone;
  std::optional<bool> expect;
};

struct Connection {
  const DeviceConfig* config = nullptr;
  std::uint64_t tag = 0;  // its epoll tag: kFirstConnectionTag + its index in the provider's list
  std::string label;  // "kitchen (10.0.0.5:6053)" once the node's name is known
  sdk::Backoff backoff;
  Phase phase = Phase::kWaiting;
  ipc::Fd fd;
  std::unique_ptr<Transport> transport;
  std::string out;  // encoded bytes the socket has not taken yet
  std::uint32_t interest = 0;  // the epoll events registered for `fd`
  bool hello_sent = false;
  Clock::time_point next_attempt{};
  Clock::time_point step_deadline{};
  Clock::time_point last_rx{};
  Clock::time_point live_since{};
  bool ping_outstanding = false;
  std::string node_name;
  std::string base_from;  // the id the node's name made when `base` was chosen (base_id)
  std::string base;       // its floe device id, kept while the node keeps its name
  pb::DeviceInfoResponse info;
  std::vector<EntityInfo> listing;
  std::size_t listing_bytes = 0;  // the payloads of `listing`'s messages
  std::vector<std::unique_ptr<FloeDevice>> devices;  // declared floe devices; kept across reconnects
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<FloeDevice*, sdk::EntityIndex>> by_key;
  std::deque<Pending> pending;
  std::string last_error;
  bool available = false;

  Connection(const DeviceConfig* c, std::chrono::milliseconds min, std::chrono::milliseconds max)
      : config(c), label(c->name.empty() ? c->address() : fmt::format("{} ({})", c->name, c->address())),
        backoff(min, max) {}
};

bool same_schema(const sdk::DeviceSpec& a, const sdk::DeviceSpec& b) {
  if (a.entities.size() != b.entities.size()) return false;
  for (std::size_t i = 0; i < a.entities.size(); ++i) {
    const auto& x = a.entities[i];
    const auto& y = b.entities[i];
    if (x.id != y.id || x.components.size() != y.components.size()) return false;
    for (std::size_t j = 0; j < x.components.size(); ++j) {
      if (x.components[j].component != y.components[j].component ||
          x.components[j].max_bytes != y.components[j].max_bytes) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace

struct EsphomeProvider::Impl {
  Config config;
  sdk::Provider provider;
  std::vector<std::unique_ptr<Connection>> connections;
  std::unordered_map<const sdk::Device*, std::pair<Connection*, FloeDevice*>> owners;
  ipc::Fd epoll;
  ipc::Fd stop_fd;
  std::atomic<bool> stopping{false};
  Clock::time_point due{};  // loop thread: no connection's deadline is earlier (see soon())

  explicit Impl(Config c)
      : config(std::move(c)), provider({.name = config.name, .socket_dir = config.socket_dir}) {
    for (const auto& d : config.devices) {
      connections.push_back(std::make_unique<Connection>(&d, config.reconnect_min, config.reconnect_max));
      connections.back()->tag = kFirstConnectionTag + connections.size() - 1;
    }
    provider.on_request([this](sdk::Request& r) { on_request(r); });
  }

  // ---- the loop -------------------------------------------------------------------------------

  Status run() {
    epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (epoll.get() < 0) return sys_error("epoll_create1");
    if (stop_fd.get() < 0) stop_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (stop_fd.get() < 0) return sys_error("eventfd");
    if (provider.fd() < 0) return logic_error("floe-esphome", "the provider SDK failed to initialise");
    FLOE_TRY(add_watch(provider.fd(), EPOLLIN, kProviderTag));
    FLOE_TRY(add_watch(stop_fd.get(), EPOLLIN, kStopTag));
    FLOE_TRY(provider.process());

    const auto start = Clock::now();
    for (auto& c : connections) c->next_attempt = start;
    due = start;
    std::array<epoll_event, 64> events{};
    while (!stopping.load(std::memory_order_relaxed)) {
      const auto now = Clock::now();
      // The timers of every connection are looked at only when the earliest of them is due: a pass
      // over 1,000 connections on every wakeup cost each request ~10 us (bench/README.md).
      if (now >= due) {
        tick(now);
        due = next_deadline(now);
      }
      const int timeout_ms = static_cast<int>(
          std::clamp<std::int64_t>(std::chrono::ceil<std::chrono::milliseconds>(due - now).count(), 0, 1000));
      const int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        return sys_error("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t tag = events[static_cast<std::size_t>(i)].data.u64;
        if (tag == kProviderTag) {
          if (auto s = provider.process(); !s) spdlog::error("floe-esphome: {}", s.error().to_string());
        } else if (tag == kStopTag) {
          stopping.store(true, std::memory_order_relaxed);
        } else if (tag - kFirstConnectionTag < connections.size()) {
          on_io(*connections[tag - kFirstConnectionTag], events[static_cast<std::size_t>(i)].events);
        }
      }
    }
    for (auto& c : connections) {
      if (c->phase == Phase::kLive) (void)send(*c, id(MsgType::DisconnectRequest), {});
      drop(*c, "floe-esphome is stopping", false);
    }
    (void)provider.process();  // hand the failed requests' answers to the core
    return {};
  }

  void stop() noexcept {
    stopping.store(true, std::memory_order_relaxed);
    if (stop_fd.get() >= 0) {
      const std::uint64_t one = 1;
      [[maybe_unused]] auto r = ::write(stop_fd.get(), &one, sizeof one);
    }
  }

  Status add_watch(int fd, std::uint32_t events, std::uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return sys_error("epoll_ctl", "add");
    return {};
  }

  void update_interest(Connection& c) {
    if (c.fd.get() < 0) return;
    epoll_event ev{};
    ev.events = EPOLLIN | ((c.phase == Phase::kConnecting || !c.out.empty()) ? EPOLLOUT : 0U);
    // Unchanged (the common case: a message sent whole): no epoll_ctl, one syscall less per message.
    if (ev.events == c.interest) return;
    ev.data.u64 = c.tag;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) c.interest = ev.events;
  }

  /// A deadline was set or moved earlier: the loop's next pass over the timers comes no later.
  void soon(Clock::time_point t) noexcept { due = std::min(due, t); }

  Clock::time_point next_deadline(Clock::time_point now) const {
    auto next = now + 1s;
    for (const auto& c : connections) {
      if (c->phase == Phase::kWaiting) next = std::min(next, c->next_attempt);
      if (c->phase != Phase::kWaiting && c->phase != Phase::kLive) next = std::min(next, c->step_deadline);
      if (c->phase == Phase::kLive) {
        next = std::min(next, c->last_rx + config.keepalive + (c->ping_outstanding ? kStepTimeout : 0s));
      }
      for (const auto& p : c->pending) next = std::min(next, p.deadline);
    }
    return next;
  }

  void tick(Clock::time_point now) {
    for (auto& cp : connections) {
      Connection& c = *cp;
      while (!c.pending.empty() && c.pending.front().deadline <= now) {
        c.pending.front().request.fail(fmt::format("ESPHome device {} did not report the new state within {:.1f} s",
                                                   c.label, seconds(config.request_timeout)));
        c.pending.pop_front();
      }
      switch (c.phase) {
        case Phase::kWaiting:
          if (now >= c.next_attempt) connect(c, now);
          break;
        case Phase::kLive: {
          const auto idle = now - c.last_rx;
          if (idle >= config.keepalive + kStepTimeout) {
            drop(c, fmt::format("no answer to a ping for {:.0f} s",
                                std::chrono::duration<double>(idle).count()));
          } else if (idle >= config.keepalive && !c.ping_outstanding) {
            c.ping_outstanding = true;
            (void)send(c, id(MsgType::PingRequest), {});
          }
          break;
        }
        default:
          if (now >= c.step_deadline) {
            drop(c, fmt::format("no answer during {} within {} s", phase_name(c.phase), kStepTimeout.count()));
          }
          break;
      }
    }
  }

  // ---- connection lifecycle -------------------------------------------------------------------

  void enter(Connection& c, Phase p) {
    c.phase = p;
    c.step_deadline = Clock::now() + kStepTimeout;
    soon(c.step_deadline);
    if (p == Phase::kLive) soon(c.last_rx + config.keepalive);
  }

  void connect(Connection& c, Clock::time_point now) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(c.config->port);
    // Blocking for a host name (numeric addresses resolve at once); devices are usually configured
    // by address or by a name the local resolver answers quickly.
    if (const int rc = ::getaddrinfo(c.config->host.c_str(), port.c_str(), &hints, &res); rc != 0) {
      c.phase = Phase::kConnecting;  // so drop() schedules the retry
      drop(c, fmt::format("cannot resolve '{}': {}", c.config->host, ::gai_strerror(rc)));
      return;
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
    c.fd.reset(::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (c.fd.get() < 0) {
      c.phase = Phase::kConnecting;
      drop(c, fmt::format("socket: {}", std::strerror(errno)));
      return;
    }
    const int one = 1;
    (void)::setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    enter(c, Phase::kConnecting);
    if (::connect(c.fd.get(), res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) {
      drop(c, fmt::format("connect: {}", std::strerror(errno)));
      return;
    }
    c.transport = c.config->psk ? Transport::noise_client(*c.config->psk) : Transport::plaintext();
    c.out.clear();
    c.hello_sent = false;
    c.ping_outstanding = false;
    c.last_rx = now;
    c.interest = EPOLLIN | EPOLLOUT;
    if (auto s = add_watch(c.fd.get(), c.interest, c.tag); !s) drop(c, s.error().to_string());
  }

  /// Closes the connection (if any), fails its requests, marks its devices unreachable and
  /// schedules the next attempt.
  void drop(Connection& c, const std::string& reason, bool retry = true) {
    if (c.phase == Phase::kWaiting) return;
    const Phase was = c.phase;
    if (c.fd.get() >= 0) (void)::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
    c.transport.reset();
    c.out.clear();
    c.phase = Phase::kWaiting;
    for (auto& p : c.pending) {
      p.request.fail(fmt::format("lost the connection to ESPHome device {}: {}", c.label, reason),
                     sdk::RequestStatus::kUnreachable);
    }
    c.pending.clear();
    set_available(c, false, reason);
    if (!retry) return;
    if (was == Phase::kLive && Clock::now() - c.live_since >= kStableConnection) c.backoff.reset();
    const auto delay = c.backoff.next();
    c.next_attempt = Clock::now() + delay;
    soon(c.next_attempt);
    // The first failure of a kind is a warning; the same failure again only an info line.
    const bool repeat = reason == c.last_error;
    c.last_error = reason;
    const std::string line = was == Phase::kLive
                                 ? fmt::format("ESPHome device {}: connection lost: {}; reconnecting in {:.1f} s",
                                               c.label, reason, seconds(delay))
                                 : fmt::format("ESPHome device {}: {}; retrying in {:.1f} s", c.label, reason,
                                               seconds(delay));
    if (repeat) {
      spdlog::info("{}", line);
    } else {
      spdlog::warn("{}", line);
    }
  }

  // The one place that tells floe whether a node's devices are reachable: while the ESPHome
  // device is away the core shows them offline and fails requests to them at once.
  void set_available(Connection& c, bool up, std::string_view reason) {
    if (c.available == up) return;
    c.available = up;
    for (auto& d : c.devices) d->device->set_available(up, reason);
  }

  // ---- I/O ------------------------------------------------------------------------------------

  void on_io(Connection& c, std::uint32_t events) {
    if (c.fd.get() < 0) return;
    if (c.phase == Phase::kConnecting) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) return drop(c, fmt::format("connect: {}", std::strerror(err)));
      // A local port in the ephemeral range with nothing listening can be picked as our own source
      // port: TCP then "connects" to itself, and the socket would hold the port the device needs.
      sockaddr_storage self{}, peer{};
      socklen_t self_len = sizeof self, peer_len = sizeof peer;
      if (::getsockname(c.fd.get(), reinterpret_cast<sockaddr*>(&self), &self_len) == 0 &&
          ::getpeername(c.fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0 && self_len == peer_len &&
          std::memcmp(&self, &peer, self_len) == 0) {
        return drop(c, "connect: Connection refused (nothing listens on the port)");
      }
      spdlog::debug("ESPHome device {}: TCP connected", c.label);
      enter(c, Phase::kHandshake);
      c.out += c.transport->start();
      maybe_hello(c);
      flush(c);
      return;
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
      receive(c);
      if (c.fd.get() < 0) return;
    }
    if ((events & EPOLLOUT) != 0) flush(c);
  }

  void receive(Connection& c) {
    std::array<std::byte, 16384> buf{};
    // At most kReadRounds buffers per wakeup: a device flooding small frames gets back to the
    // loop (level-triggered, so the rest is read next round) before the other devices starve.
    for (int rounds = 0; rounds < kReadRounds && c.fd.get() >= 0; ++rounds) {
      const ssize_t n = ::recv(c.fd.get(), buf.data(), buf.size(), 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        return drop(c, fmt::format("receive: {}", std::strerror(errno)));
      }
      if (n == 0) {
        if (c.phase == Phase::kHandshake || c.phase == Phase::kHello) {
          return drop(c, c.config->psk ? "the device closed the connection during the handshake (is it really "
                                         "encrypted, and with this key?)"
                                       : "the device closed the connection during Hello (does it expect "
                                         "encryption? set encryption_key)");
        }
        return drop(c, "the device closed the connection");
      }
      c.last_rx = Clock::now();
      c.ping_outstanding = false;  // anything the device sends shows it is alive
      soon(c.last_rx + config.keepalive);
      std::vector<Message> messages;
      std::string reply;
      auto fed = c.transport->feed(std::span<const std::byte>(buf.data(), static_cast<std::size_t>(n)), messages, reply);
      if (!reply.empty()) c.out += reply;
      if (!fed) {
        const bool handshake = c.phase == Phase::kHandshake || c.phase == Phase::kHello;
        return drop(c, handshake ? fmt::format("handshake failed: {}", fed.error().message)
                                 : fmt::format("bad data from the device: {}", fed.error().message));
      }
      maybe_hello(c);
      for (const auto& m : messages) {
        on_message(c, m);
        if (c.fd.get() < 0) return;
      }
      flush(c);
      // A short read took everything there was: no second recv() just to meet EAGAIN (epoll is
      // level-triggered, so whatever arrives meanwhile, or the peer's close, wakes us again).
      if (static_cast<std::size_t>(n) < buf.size()) return;
    }
  }

  void maybe_hello(Connection& c) {
    if (c.hello_sent || !c.transport || !c.transport->ready()) return;
    c.hello_sent = true;
    pb::HelloRequest hello;
    hello.set_client_info("floe-esphome");
    hello.set_api_version_major(kApiMajor);
    hello.set_api_version_minor(kApiMinor);
    enter(c, Phase::kHello);
    (void)send(c, id(MsgType::HelloRequest), hello.SerializeAsString());
  }

  bool send(Connection& c, std::uint16_t type, std::string_view payload) {
    if (c.fd.get() < 0 || !c.transport) return false;
    auto bytes = c.transport->encode(type, payload);
    if (!bytes) {
      drop(c, fmt::format("cannot encode message {}: {}", type, bytes.error().message));
      return false;
    }
    const bool idle = c.out.empty();
    c.out += *bytes;
    if (c.out.size() > kMaxOutBytes) {
      drop(c, "the device does not read what floe-esphome sends");
      return false;
    }
    // Bytes already waiting mean the socket was full: EPOLLOUT flushes them, no send() per message.
    if (idle) flush(c);
    return c.fd.get() >= 0;
  }

  void flush(Connection& c) {
    while (c.fd.get() >= 0 && !c.out.empty()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return drop(c, fmt::format("send: {}", std::strerror(errno)));
      }
      c.out.erase(0, static_cast<std::size_t>(n));
    }
    update_interest(c);
  }

  // ---- messages -------------------------------------------------------------------------------

  template <typename M>
  bool parse(Connection& c, const Message& m, M& out, std::string_view what) {
    if (out.ParseFromArray(m.payload.data(), static_cast<int>(m.payload.size()))) return true;
    drop(c, fmt::format("garbage {} from the device", what));
    return false;
  }

  void on_message(Connection& c, const Message& m) {
    switch (static_cast<MsgType>(m.type)) {
      case MsgType::HelloResponse: {
        if (c.phase != Phase::kHello) return;  // one per connection; a second must not restart the steps
        pb::HelloResponse r;
        if (!parse(c, m, r, "HelloResponse")) return;
        if (r.api_version_major() != kApiMajor) {
          return drop(c, fmt::format("the device speaks native API {}.{}, floe-esphome speaks {}.{}",
                                     r.api_version_major(), r.api_version_minor(), kApiMajor, kApiMinor));
        }
        if (r.api_version_minor() != kApiMinor) {
          spdlog::debug("ESPHome device {}: API {}.{} (we speak {}.{})", c.label, r.api_version_major(),
                        r.api_version_minor(), kApiMajor, kApiMinor);
        }
        c.node_name = r.name();
        enter(c, Phase::kDeviceInfo);
        (void)send(c, id(MsgType::DeviceInfoRequest), {});
        return;
      }
      case MsgType::DeviceInfoResponse: {
        if (c.phase != Phase::kDeviceInfo) return;
        if (!parse(c, m, c.info, "DeviceInfoResponse")) return;
        if (static_cast<std::size_t>(c.info.devices_size()) > kMaxNodeSubDevices) {
          return drop(c, fmt::format("the device lists {} sub-devices; floe-esphome takes at most {} per node",
                                     c.info.devices_size(), kMaxNodeSubDevices));
        }
        if (!c.info.name().empty()) c.node_name = c.info.name();
        if (c.config->name.empty() && !c.node_name.empty()) {
          c.label = fmt::format("{} ({})", c.node_name, c.config->address());
        }
        c.listing.clear();
        c.listing_bytes = 0;
        enter(c, Phase::kListing);
        (void)send(c, id(MsgType::ListEntitiesRequest), {});
        return;
      }
      case MsgType::ListEntitiesDoneResponse: {
        if (c.phase != Phase::kListing) return;
        if (!declare(c)) return;
        enter(c, Phase::kLive);
        c.live_since = Clock::now();  // the backoff resets once it has lasted (drop())
        c.last_error.clear();
        c.ping_outstanding = false;
        spdlog::info("ESPHome device {}: connected ({}{} entities{})", c.label,
                     c.config->psk ? "encrypted, " : "", c.listing.size(),
                     c.info.esphome_version().empty() ? "" : ", ESPHome " + c.info.esphome_version());
        set_available(c, true, {});
        (void)send(c, id(MsgType::SubscribeStatesRequest), {});
        return;
      }
      case MsgType::PingRequest: (void)send(c, id(MsgType::PingResponse), {}); return;
      case MsgType::PingResponse: c.ping_outstanding = false; return;
      case MsgType::GetTimeRequest: {
        pb::GetTimeResponse r;
        r.set_epoch_seconds(static_cast<std::uint32_t>(std::time(nullptr)));
        (void)send(c, id(MsgType::GetTimeResponse), r.SerializeAsString());
        return;
      }
      case MsgType::DisconnectRequest:
        (void)send(c, id(MsgType::DisconnectResponse), {});
        return drop(c, "the device asked to disconnect");
      case MsgType::DisconnectResponse: return drop(c, "the device disconnected");
      default: break;
    }
    if (c.phase == Phase::kListing) {
      auto e = parse_list_entity(m.type, m.payload);
      if (!e) return drop(c, e.error().message);
      if (!*e) return;
      c.listing_bytes += m.payload.size();
      if (c.listing.size() == kMaxNodeEntities) {
        return drop(c, fmt::format("the device lists more than {} entities; floe-esphome takes at most {} per node",
                                   kMaxNodeEntities, kMaxNodeEntities));
      }
      if (c.listing_bytes > kMaxListingBytes) {
        return drop(c, fmt::format("the device's entity list exceeds {} bytes; floe-esphome takes at most that much "
                                   "per node",
                                   kMaxListingBytes));
      }
      c.listing.push_back(std::move(**e));
      return;
    }
    if (c.phase == Phase::kLive) on_state(c, m);
    // Anything else (a type floe does not map, or one out of place) is ignored, as devices do.
  }

  void on_state(Connection& c, const Message& m) {
    auto update = parse_state(m.type, m.payload, [&](std::uint32_t key, std::uint32_t device_id) -> const EntityInfo* {
      auto it = c.by_key.find({key, device_id});
      if (it == c.by_key.end()) return nullptr;
      return &it->second.first->entities[it->second.second];
    });
    if (!update) return drop(c, update.error().message);
    if (!*update) return;
    const EntityInfo& e = *(*update)->entity;
    auto [dev, index] = c.by_key.at({e.key, e.device_id});
    for (const auto& w : (*update)->writes) write(*dev->device, index, w);
    for (auto it = c.pending.begin(); it != c.pending.end();) {
      if (it->key == e.key && it->device_id == e.device_id && !contradicts(**update, *it)) {
        it->request.succeed();
        it = c.pending.erase(it);
      } else {
        ++it;
      }
    }
  }

  /// True if `update` reports, for the pending set's boolean component, the other value.
  template <typename Update>
  static bool contradicts(const Update& update, const Pending& p) {
    if (!p.expect) return false;
    for (const auto& w : update.writes) {
      if (w.component != p.component) continue;
      const auto* v = std::get_if<ipc::Value>(&w.value);
      const bool* b = v != nullptr ? std::get_if<bool>(v) : nullptr;
      return b != nullptr && *b != *p.expect;
    }
    return false;
  }

  static void write(sdk::Device& d, sdk::EntityIndex i, const Write& w) {
    sdk::WriteStatus s = sdk::WriteStatus::kOk;
    if (const auto* v = std::get_if<ipc::Value>(&w.value)) {
      s = d.set(i, w.component, *v);
    } else if (const auto* t = std::get_if<std::string>(&w.value)) {
      s = d.set_text(i, w.component, *t);
    } else {
      s = d.set_list(i, w.component, std::get<std::vector<std::string>>(w.value));
    }
    if (s != sdk::WriteStatus::kOk) {
      spdlog::debug("device '{}' entity {}: {} not written: {}", d.id(), i, ipc::component_name(w.component),
                    ipc::to_string(s));
    }
  }

  // ---- declaring the floe devices -------------------------------------------------------------

  std::string base_id(Connection& c) const {
    if (!c.config->name.empty()) return c.config->name;
    std::string id = slugify(!c.node_name.empty() ? std::string_view(c.node_name) : std::string_view(c.config->host));
    // Chosen once it holds devices: a reconnect keeps the id, whatever the other nodes were called
    // meanwhile. A node dropped before it declared any chooses again.
    if (id == c.base_from && !c.devices.empty()) return c.base;
    // The node's own name is the device's to choose: it must not take the id of a device
    // configured by name (nor of its sub-devices, "<name>-..."), nor an id a node without a name:
    // holds already (two nodes flashed with one name). Configured names win whichever connects
    // first, then the first node to connect; the other node gets its address appended.
    const bool configured = std::any_of(connections.begin(), connections.end(), [&](const auto& other) {
      const std::string& name = other->config->name;
      return !name.empty() && id.starts_with(name) && (id.size() == name.size() || id[name.size()] == '-');
    });
    // Held by a node that has floe devices now: one that was dropped (too many sub-devices,
    // refused by floe) before it declared any reserves nothing.
    const bool held = std::any_of(connections.begin(), connections.end(), [&](const auto& other) {
      return other.get() != &c && other->config->name.empty() && !other->devices.empty() &&
             (id == other->base || std::any_of(other->devices.begin(), other->devices.end(),
                                               [&](const auto& d) { return d->device->id() == id; }));
    });
    const char* why = configured ? "a configured device's id"
                      : held     ? "the id of another node without a name: in the configuration, which connected first"
                                 : nullptr;
    std::string chosen = id;
    if (why != nullptr) {
      chosen = sub_device_id(id, c.config->address());
      spdlog::warn("ESPHome device {}: its name '{}' is {}; it is declared as '{}' (give it a name: in the "
                   "configuration)",
                   c.label, id, why, chosen);
    }
    c.base_from = id;
    c.base = chosen;
    return chosen;
  }

  /// Declares (first time) or re-binds (reconnect) the node's floe devices from c.listing. False
  /// if the node was dropped instead (too many sub-devices).
  bool declare(Connection& c) {
    const std::string base = base_id(c);
    // The node first, then its sub-devices in the order it lists them, then any device_id an
    // entity names that DeviceInfo did not list.
    struct Part {
      std::uint32_t device_id = 0;
      std::string name;
      std::vector<EntityInfo> entities;
      std::string floe_id;
    };
    std::vector<Part> parts(1);
    std::unordered_map<std::uint32_t, std::size_t> by_device_id{{0, 0}};
    for (const auto& sd : c.info.devices()) {
      if (by_device_id.try_emplace(sd.device_id(), parts.size()).second) {
        parts.push_back({.device_id = sd.device_id(), .name = sd.name(), .entities = {}, .floe_id = {}});
      }
    }
    for (const auto& e : c.listing) {
      auto [at, added] = by_device_id.try_emplace(e.device_id, parts.size());
      if (added) parts.push_back({.device_id = e.device_id, .name = {}, .entities = {}, .floe_id = {}});
      parts[at->second].entities.push_back(e);
    }
    if (parts.size() > kMaxNodeSubDevices + 1) {
      drop(c, fmt::format("the device's entities name {} sub-devices; floe-esphome takes at most {} per node",
                          parts.size() - 1, kMaxNodeSubDevices));
      return false;
    }
    // Every part with entities gets an id of its own, before any is bound: two sub-devices whose
    // names differ only in case, or ids cut at 64 characters, must not land on one floe device
    // (binding the second would withdraw the first while its entities still point at it).
    std::set<std::string> taken;
    for (auto& p : parts) {
      if (p.entities.empty()) continue;  // a node whose entities are all on sub-devices declares none itself
      const std::string number = std::to_string(p.device_id);
      const std::string wanted = p.device_id == 0 ? base : sub_device_id(base, p.name.empty() ? number : p.name);
      p.floe_id = wanted;
      for (int n = 2; !taken.insert(p.floe_id).second; ++n) {
        p.floe_id = sub_device_id(wanted, n == 2 ? number : fmt::format("{}-{}", number, n));
      }
      if (p.floe_id != wanted) {
        spdlog::warn("ESPHome device {}: sub-device {} would be '{}' like another part of the node; it is '{}'",
                     c.label, p.device_id, wanted, p.floe_id);
      }
    }
    c.by_key.clear();
    for (auto& p : parts) {
      if (p.entities.empty()) continue;
      std::string display =
          !c.info.friendly_name().empty() ? c.info.friendly_name() : (c.node_name.empty() ? base : c.node_name);
      if (p.device_id != 0) display = p.name.empty() ? p.floe_id : p.name;
      sdk::DeviceSpec spec{.id = p.floe_id, .name = display, .groups = c.config->groups, .entities = {}};
      const auto ids = entity_ids(p.floe_id, p.entities);
      for (std::size_t i = 0; i < p.entities.size(); ++i) {
        spec.entities.push_back({.id = ids[i], .name = p.entities[i].name, .components = components_for(p.entities[i])});
      }
      FloeDevice* fd = bind(c, std::move(spec), std::move(p.entities));
      if (fd == nullptr) continue;
      for (sdk::EntityIndex i = 0; i < fd->entities.size(); ++i) {
        c.by_key[{fd->entities[i].key, fd->entities[i].device_id}] = {fd, i};
        for (const auto& w : static_writes(fd->entities[i])) write(*fd->device, i, w);
      }
    }
    // A part the node no longer lists (or that has no entities now) is withdrawn.
    for (auto it = c.devices.begin(); it != c.devices.end();) {
      if (!taken.contains((*it)->device->id())) {
        withdraw(c, it);
        it = c.devices.begin();
      } else {
        ++it;
      }
    }
    return true;
  }

  FloeDevice* bind(Connection& c, sdk::DeviceSpec spec, std::vector<EntityInfo> entities) {
    auto known = std::find_if(c.devices.begin(), c.devices.end(),
                              [&](const auto& d) { return d->device->id() == spec.id; });
    if (known != c.devices.end()) {
      if (same_schema((*known)->device->spec(), spec)) {
        (*known)->entities = std::move(entities);  // keys may change with new firmware; ids did not
        return known->get();
      }
      // New firmware with other entities: the floe device is declared again with its new schema.
      spdlog::info("ESPHome device {}: its entity list changed; declaring '{}' again", c.label, spec.id);
      withdraw(c, known);
    }
    auto added = provider.try_add_device(spec);
    if (!added) {
      spdlog::error("ESPHome device {}: floe refused device '{}': {}", c.label, spec.id, added.error().to_string());
      return nullptr;
    }
    auto fd = std::make_unique<FloeDevice>();
    fd->device = &added->get();
    fd->entities = std::move(entities);
    owners[fd->device] = {&c, fd.get()};
    c.devices.push_back(std::move(fd));
    spdlog::info("ESPHome device {}: declared floe device '{}' with {} entities", c.label, spec.id,
                 spec.entities.size());
    return c.devices.back().get();
  }

  void withdraw(Connection& c, std::vector<std::unique_ptr<FloeDevice>>::iterator it) {
    const std::string id = (*it)->device->id();
    owners.erase((*it)->device);
    c.devices.erase(it);
    if (auto s = provider.remove_device(id); !s) {
      spdlog::warn("ESPHome device {}: removing floe device '{}': {}", c.label, id, s.error().to_string());
    }
  }

  // ---- requests -------------------------------------------------------------------------------

  void on_request(sdk::Request& r) {
    auto owner = owners.find(&r.device());
    if (owner == owners.end()) return r.fail("floe-esphome does not know this device");
    auto& [c, fd] = owner->second;
    if (r.entity() >= fd->entities.size()) return r.fail("no such entity");
    const EntityInfo& e = fd->entities[r.entity()];
    if (c->phase != Phase::kLive) {
      return r.fail(fmt::format("ESPHome device {} is not connected{}{}", c->label, c->last_error.empty() ? "" : ": ",
                                c->last_error),
                    sdk::RequestStatus::kUnreachable);
    }
    const sdk::RequestValue value = r.value() != nullptr ? sdk::RequestValue{*r.value()} : sdk::RequestValue{*r.text()};
    auto cmd = command_for(e, r.component(), value);
    if (!cmd) return r.fail(cmd.error().message, sdk::RequestStatus::kUnsupported);
    if (!send(*c, cmd->type, cmd->payload)) {
      return r.fail(fmt::format("lost the connection to ESPHome device {}", c->label), sdk::RequestStatus::kUnreachable);
    }
    if (!cmd->answered_by_state) return r.succeed();
    std::optional<bool> expect;
    if (const auto* v = std::get_if<ipc::Value>(&value)) {
      if (const bool* b = std::get_if<bool>(v)) expect = *b;
    }
    const ipc::Component component = r.component();
    c->pending.push_back({std::move(r), e.key, e.device_id, Clock::now() + config.request_timeout, component, expect});
    soon(c->pending.back().deadline);
  }
};

EsphomeProvider::EsphomeProvider(Config config) : impl_(std::make_unique<Impl>(std::move(config))) {
  impl_->stop_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
}
EsphomeProvider::~EsphomeProvider() = default;

Status EsphomeProvider::run() { return impl_->run(); }
void EsphomeProvider::stop() noexcept { impl_->stop(); }

}  // namespace floe::esphome
