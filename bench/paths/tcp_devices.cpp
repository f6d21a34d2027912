#include "paths/tcp_devices.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "clock.hpp"
#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"
#include "sim.hpp"

namespace floe::bench::paths {

namespace api = floe::esphome::api;
using floe::esphome::Message;
using floe::esphome::MsgType;
using floe::esphome::to_u16;

namespace {
constexpr double kSeqScale = 16777216.0;  // 2^24: float's exact integer range
}  // namespace

TcpShared* map_tcp_shared() {
  void* p = ::mmap(nullptr, sizeof(TcpShared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<TcpShared*>(p);  // zeroed: every field's initial value
}

void unmap_tcp_shared(TcpShared* t) {
  if (t != nullptr) ::munmap(t, sizeof(TcpShared));
}

std::string tcp_device_name(std::uint32_t d) { return fmt::format("bench-{}", d); }

float brightness_of_seq(std::uint64_t seq) noexcept { return static_cast<float>(static_cast<double>(seq) / kSeqScale); }

std::uint64_t seq_of_brightness(double brightness) noexcept {
  return static_cast<std::uint64_t>(std::llround(brightness * kSeqScale));
}

// ---- the devices process ------------------------------------------------------------------------

int run_devices_process(Shared& s, TcpShared& t, std::uint32_t devices) {
  namespace sim = floe::esphome::sim;
  spdlog::set_level(spdlog::level::warn);  // the simulator logs every command at info
  sim::SimConfig cfg;
  cfg.sensor_interval_ms = 0;
  cfg.send_time_requests = false;
  cfg.drop_idle_ms = 24u * 3600 * 1000;  // a quiet provider between phases is not a dead one
  for (std::uint32_t d = 0; d < devices; ++d) {
    sim::DeviceConfig dc;
    dc.name = tcp_device_name(d);
    sim::EntityConfig light;
    light.kind = sim::Kind::kLight;
    light.name = "Light";
    light.key = kLightKey;
    sim::EntityConfig number;
    number.kind = sim::Kind::kNumber;
    number.name = "Commit";
    number.key = kCommitKey;
    number.min = 0;
    number.max = static_cast<float>(kSeqScale);
    number.step = 1;
    dc.entities = {light, number};
    cfg.devices.push_back(std::move(dc));
  }
  auto fail = [&](const std::string& why) {
    std::snprintf(t.error, sizeof t.error, "%s", why.c_str());
    t.devices_ready.store(2, std::memory_order_release);
    wake_word(t.devices_ready);
    return 1;
  };
  auto created = sim::Simulator::create(std::move(cfg));
  if (!created) return fail("floe-esphome-sim: " + created.error().to_string());
  sim::Simulator& simulator = **created;
  try {
    const auto ports = nlohmann::json::parse(simulator.ports_json()).at("devices");
    for (std::uint32_t d = 0; d < devices; ++d) t.ports[d] = ports.at(d).at("port").get<std::uint16_t>();
  } catch (const std::exception& e) {
    return fail(fmt::format("floe-esphome-sim ports: {}", e.what()));
  }
  t.devices = devices;
  // The device has the request when its command arrives: stamped before anything else.
  simulator.on_command([&s](std::size_t, const Message& m) {
    const std::int64_t now = now_ns();
    if (m.type != to_u16(MsgType::LightCommandRequest)) return;
    api::LightCommandRequest r;
    if (floe::esphome::parse(m.payload, r) && r.has_brightness()) stamp_arrival(s, seq_of_brightness(r.brightness()), now);
  });
  // SYNC(ports): release pairs with wait_devices_ready's acquire.
  t.devices_ready.store(1, std::memory_order_release);
  wake_word(t.devices_ready);

  std::thread commits([&] {
    std::uint64_t counter = 0;
    run_commit_driver(s, [&](std::uint32_t device, std::uint64_t value) {
      if (++counter >= kMaxSeq) return report_failure(s, "devices: too many commits for one run");
      // SYNC(commit-tag): release pairs with the watcher's acquire (after the state travelled).
      t.commit_tag[counter].store(value, std::memory_order_release);
      api::NumberCommandRequest r;
      r.set_key(kCommitKey);
      r.set_state(static_cast<float>(counter));
      simulator.inject(device, Message{to_u16(MsgType::NumberCommandRequest), floe::esphome::serialize(r)});
    });
    simulator.stop();
  });
  auto ran = simulator.run(false);
  commits.join();
  if (!ran) {
    report_failure(s, "floe-esphome-sim: " + ran.error().to_string());
    return 1;
  }
  return 0;
}

bool wait_devices_ready(TcpShared& t, pid_t devices_pid, std::string& error) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    const std::uint32_t state = t.devices_ready.load(std::memory_order_acquire);
    if (state == 1) return true;
    if (state == 2) {
      error = t.error;
      return false;
    }
    if (!child_alive(devices_pid)) {
      error = "the devices process (floe-esphome-sim) exited";
      return false;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      error = "the simulated devices did not start in time";
      return false;
    }
    wait_word(t.devices_ready, 0, std::chrono::milliseconds(50));
  }
}

// ---- the watcher's translation --------------------------------------------------------------------

namespace {

class TranslatingWatcher final : public CommitWatcher {
 public:
  TranslatingWatcher(std::unique_ptr<CommitWatcher> inner, const TcpShared& t) : inner_(std::move(inner)), t_(t) {}
  [[nodiscard]] bool sees_every_earlier_commit() const override { return inner_->sees_every_earlier_commit(); }
  bool next(std::uint64_t& seq, std::chrono::milliseconds timeout, std::string& error) override {
    std::uint64_t counter = 0;
    if (!inner_->next(counter, timeout, error)) return false;
    seq = counter > 0 && counter < kMaxSeq ? t_.commit_tag[counter].load(std::memory_order_acquire) : 0;
    return true;
  }

 private:
  std::unique_ptr<CommitWatcher> inner_;
  const TcpShared& t_;
};

}  // namespace

std::unique_ptr<CommitWatcher> translate_commits(std::unique_ptr<CommitWatcher> inner, const TcpShared& t) {
  if (!inner) return nullptr;
  return std::make_unique<TranslatingWatcher>(std::move(inner), t);
}

// ---- the provider's native-API connection -------------------------------------------------------

struct EsphomeLink::Impl {
  std::unique_ptr<floe::esphome::Transport> transport = floe::esphome::Transport::plaintext();
  std::vector<Message> msgs;
};

EsphomeLink::EsphomeLink(int fd, std::unique_ptr<Impl> impl) : fd_(fd), impl_(std::move(impl)) {}

EsphomeLink::~EsphomeLink() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

/// Writes all of `bytes`, waiting for room on a non-blocking socket.
bool write_all(int fd, std::string_view bytes, std::string& error) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    error = fmt::format("send: {}", std::strerror(errno));
    return false;
  }
  return true;
}

template <typename T>
std::string frame(floe::esphome::Transport& tr, const T& m) {
  auto f = tr.encode(to_u16(floe::esphome::type_of<T>()), floe::esphome::serialize(m));
  return f ? *f : std::string{};
}

}  // namespace

std::unique_ptr<EsphomeLink> EsphomeLink::open(std::uint16_t port, std::string& error) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = fmt::format("socket: {}", std::strerror(errno));
    return nullptr;
  }
  std::unique_ptr<EsphomeLink> link(new EsphomeLink(fd, std::make_unique<Impl>()));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    error = fmt::format("connect 127.0.0.1:{}: {}", port, std::strerror(errno));
    return nullptr;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto& tr = *link->impl_->transport;
  api::HelloRequest hello;
  hello.set_client_info("floe-bench");
  hello.set_api_version_major(1);
  hello.set_api_version_minor(10);
  // Hello, Connect, ListEntities, SubscribeStates in one write: the device handles them in order.
  const std::string out = frame(tr, hello) + frame(tr, api::AuthenticationRequest{}) +
                          frame(tr, api::ListEntitiesRequest{}) + frame(tr, api::SubscribeStatesRequest{});
  if (!write_all(fd, out, error)) return nullptr;
  bool hello_ok = false, listed = false, light_listed = false, number_listed = false, light_state = false,
       number_state = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char buf[16384];
  while (!(hello_ok && listed && light_state && number_state)) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      error = fmt::format("127.0.0.1:{}: no complete Hello/ListEntities/SubscribeStates answer within 10 s", port);
      return nullptr;
    }
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      error = fmt::format("127.0.0.1:{}: the device closed the connection during setup", port);
      return nullptr;
    }
    std::vector<Message> msgs;
    std::string reply;
    if (auto fed = tr.feed(std::string_view(buf, static_cast<std::size_t>(n)), msgs, reply); !fed) {
      error = fmt::format("127.0.0.1:{}: {}", port, fed.error().message);
      return nullptr;
    }
    for (const auto& m : msgs) {
      switch (static_cast<MsgType>(m.type)) {
        case MsgType::HelloResponse: hello_ok = true; break;
        case MsgType::ListEntitiesLightResponse: {
          api::ListEntitiesLightResponse r;
          light_listed |= floe::esphome::parse(m.payload, r) && r.key() == kLightKey;
          break;
        }
        case MsgType::ListEntitiesNumberResponse: {
          api::ListEntitiesNumberResponse r;
          number_listed |= floe::esphome::parse(m.payload, r) && r.key() == kCommitKey;
          break;
        }
        case MsgType::ListEntitiesDoneResponse:
          if (!light_listed || !number_listed) {
            error = fmt::format("127.0.0.1:{}: the device lists no light {} and number {}", port, kLightKey, kCommitKey);
            return nullptr;
          }
          listed = true;
          break;
        case MsgType::LightStateResponse: light_state = true; break;
        case MsgType::NumberStateResponse: number_state = true; break;
        default: break;
      }
    }
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return link;
}

bool EsphomeLink::send_request(std::uint64_t seq, std::string& error) {
  api::LightCommandRequest r;
  r.set_key(kLightKey);
  r.set_has_state(true);
  r.set_state(true);
  r.set_has_brightness(true);
  r.set_brightness(brightness_of_seq(seq));
  return write_all(fd_, frame(*impl_->transport, r), error);
}

bool EsphomeLink::drain_impl(const std::function<void(bool, std::uint64_t)>& on_state, std::string& error) {
  auto& tr = *impl_->transport;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) {
      error = "the device closed the connection";
      return false;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      error = fmt::format("recv: {}", std::strerror(errno));
      return false;
    }
    auto& msgs = impl_->msgs;
    msgs.clear();
    std::string reply;
    if (auto fed = tr.feed(std::string_view(buf, static_cast<std::size_t>(n)), msgs, reply); !fed) {
      error = fed.error().message;
      return false;
    }
    std::string answers;
    for (const auto& m : msgs) {
      switch (static_cast<MsgType>(m.type)) {
        case MsgType::LightStateResponse: on_state(true, 0); break;
        case MsgType::NumberStateResponse: {
          api::NumberStateResponse r;
          if (floe::esphome::parse(m.payload, r)) on_state(false, static_cast<std::uint64_t>(std::llround(r.state())));
          break;
        }
        case MsgType::PingRequest: answers += frame(tr, api::PingResponse{}); break;
        case MsgType::GetTimeRequest: {
          api::GetTimeResponse r;
          r.set_epoch_seconds(static_cast<std::uint32_t>(std::time(nullptr)));
          answers += frame(tr, r);
          break;
        }
        case MsgType::DisconnectRequest:
          error = "the device disconnects";
          return false;
        default: break;
      }
    }
    if (!answers.empty() && !write_all(fd_, answers, error)) return false;
  }
}

}  // namespace floe::bench::paths
