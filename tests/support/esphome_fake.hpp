// An ESPHome device for integration tests, served by a thread of the test on a real TCP socket
// (loopback, ephemeral port) through the real native-API codec, plaintext or Noise; and the key
// helper the tests configure it with. Header-only: only the tests that start floe-esphome use it,
// and they link the codec library.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"
#include "floe/ipc/fd.hpp"

namespace floe::test {

/// A fixed test key derived from `seed`.
inline esphome::Psk key_from(std::uint8_t seed) {
  esphome::Psk k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed + i * 13);
  return k;
}

// Node `name` with a light (key 1), a switch (key 2), a temperature sensor (key 3) and, on its
// sub-device 5 "Porch", another switch with key 2 (so only (key, device_id) tells them apart).
// After SubscribeStates it sends all states, a GetTimeRequest and a message of an unknown type.
//
// A device can also misbehave (set_misdeed): a hook run on the device's thread with a client's
// socket and transport, right after the client connects or once it has subscribed.
class FakeDevice {
 public:
  using MsgType = esphome::MsgType;
  using Psk = esphome::Psk;
  using Transport = esphome::Transport;
  /// What a misbehaving device does to one client: anything on `fd`, frames encoded with
  /// `transport`. False closes the connection.
  using Misdeed = std::function<bool(int fd, Transport& transport)>;

  FakeDevice(std::string name, std::optional<Psk> psk, std::uint16_t port = 0) : name_(std::move(name)), psk_(psk) {
    listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const int one = 1;
    ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    bound_ = ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(listener_.get(), 8) == 0;
    socklen_t len = sizeof a;
    ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    thread_ = std::thread([this] { serve(); });
  }
  FakeDevice(const FakeDevice&) = delete;
  FakeDevice& operator=(const FakeDevice&) = delete;
  ~FakeDevice() {
    stop_ = true;
    poke();
    thread_.join();
  }

  [[nodiscard]] bool bound() const { return bound_; }
  [[nodiscard]] std::uint16_t port() const { return port_; }
  [[nodiscard]] int time_answers() const { return time_answers_.load(); }
  [[nodiscard]] int commands() const { return commands_.load(); }
  [[nodiscard]] bool porch_relay() {
    std::lock_guard lock(mu_);
    return porch_relay_;
  }
  /// A new temperature, reported to every subscribed client.
  void set_temperature(float t) {
    {
      std::lock_guard lock(mu_);
      temperature_ = t;
    }
    push_ = true;
    poke();
  }
  /// A silent device takes commands and never reports the resulting state.
  void set_silent(bool silent) { silent_ = silent; }
  /// A frozen device reads everything and answers nothing, not even pings.
  void set_frozen(bool frozen) { frozen_ = frozen; }
  [[nodiscard]] int pings() const { return pings_.load(); }
  /// Connections accepted so far.
  [[nodiscard]] int connections() const { return connections_.load(); }
  /// From now on every client gets `m` once: when it has subscribed (a client subscribed already
  /// gets it at once), or with `at_connect` as soon as it is accepted, before any handshake. An
  /// empty `m` makes the device behave again.
  void set_misdeed(Misdeed m, bool at_connect = false) {
    {
      std::lock_guard lock(mu_);
      misdeed_ = std::move(m);
      misdeed_at_connect_ = at_connect;
    }
    misdeed_now_ = true;
    poke();
  }
  /// What the device lists: its DeviceInfo and its entity messages (type, encoded message), which
  /// ListEntities sends in order before Done.
  struct Listing {
    esphome::api::DeviceInfoResponse info;
    std::vector<std::pair<std::uint16_t, std::string>> entities;
  };
  /// Changes what the device lists, from the next DeviceInfo request on (the standard listing
  /// above is passed in to be edited).
  void set_listing(std::function<void(Listing&)> edit) {
    std::lock_guard lock(mu_);
    edit_listing_ = std::move(edit);
  }
  /// Writes all of `bytes` (blocking); false if the peer is gone.
  static bool write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

 private:
  struct Client {
    ipc::Fd fd;
    std::unique_ptr<Transport> transport;
    bool subscribed = false;
    bool misdeed_done = false;
  };

  // Runs the misdeed on `c` if it has not had it yet; false: close the client.
  bool misbehave(Client& c) {
    Misdeed m;
    {
      std::lock_guard lock(mu_);
      m = misdeed_;
    }
    if (!m || c.misdeed_done) return true;
    c.misdeed_done = true;
    return m(c.fd.get(), *c.transport);
  }
  bool misdeed_at_connect() {
    std::lock_guard lock(mu_);
    return misdeed_at_connect_;
  }

  void poke() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof one);
  }

  void serve() {
    std::vector<std::unique_ptr<Client>> clients;
    while (!stop_) {
      std::vector<pollfd> fds{{listener_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      for (auto& c : clients) fds.push_back({c->fd.get(), POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 1000) < 0) continue;
      if ((fds[1].revents & POLLIN) != 0) {
        std::uint64_t n = 0;
        [[maybe_unused]] auto r = ::read(wake_.get(), &n, sizeof n);
      }
      if (misdeed_now_.exchange(false) && !misdeed_at_connect()) {
        for (auto& c : clients) {
          if (c->subscribed && !misbehave(*c)) c->fd.reset();
        }
        std::erase_if(clients, [](const auto& c) { return c->fd.get() < 0; });
      }
      if (push_.exchange(false)) {
        for (auto& c : clients) {
          if (c->subscribed) send(*c, to_u16(MsgType::SensorStateResponse), sensor_state());
        }
      }
      for (std::size_t i = 0; i < clients.size(); ++i) {
        if ((fds[2 + i].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !receive(*clients[i])) clients[i]->fd.reset();
      }
      std::erase_if(clients, [](const auto& c) { return c->fd.get() < 0; });
      if ((fds[0].revents & POLLIN) != 0) {
        auto c = std::make_unique<Client>();
        c->fd.reset(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        c->transport = psk_ ? Transport::noise_server(*psk_, name_, "0123456789ab")
                            : Transport::plaintext(Transport::Side::kServer);
        if (c->fd.get() >= 0) {
          connections_.fetch_add(1);
          if (!misdeed_at_connect() || misbehave(*c)) clients.push_back(std::move(c));
        }
      }
    }
  }

  void send(Client& c, std::uint16_t type, const google::protobuf::MessageLite& m) {
    auto bytes = c.transport->encode(type, m.SerializeAsString());
    if (bytes) (void)write_all(c.fd.get(), *bytes);
  }

  esphome::api::SensorStateResponse sensor_state() {
    esphome::api::SensorStateResponse s;
    s.set_key(3);
    std::lock_guard lock(mu_);
    s.set_state(temperature_);
    return s;
  }
  esphome::api::LightStateResponse light_state() {
    esphome::api::LightStateResponse l;
    l.set_key(1);
    std::lock_guard lock(mu_);
    l.set_state(light_on_);
    l.set_brightness(brightness_);
    l.set_red(1.0F);
    l.set_green(1.0F);
    l.set_blue(1.0F);
    l.set_color_mode(esphome::api::COLOR_MODE_RGB);
    return l;
  }
  esphome::api::SwitchStateResponse switch_state(std::uint32_t device_id) {
    esphome::api::SwitchStateResponse s;
    s.set_key(2);
    s.set_device_id(device_id);
    std::lock_guard lock(mu_);
    s.set_state(device_id == 5 ? porch_relay_ : relay_);
    return s;
  }

  Listing listing() {
    Listing l;
    l.info.set_name(name_);
    l.info.set_mac_address("01:23:45:67:89:AB");
    l.info.set_esphome_version("2026.1.0");
    auto* porch = l.info.add_devices();
    porch->set_device_id(5);
    porch->set_name("Porch");
    esphome::api::ListEntitiesLightResponse light;
    light.set_object_id("light");
    light.set_key(1);
    light.set_name("Light");
    light.add_supported_color_modes(esphome::api::COLOR_MODE_RGB);
    l.entities.emplace_back(to_u16(MsgType::ListEntitiesLightResponse), light.SerializeAsString());
    esphome::api::ListEntitiesSwitchResponse relay;
    relay.set_key(2);
    relay.set_name("Relay");  // no object_id: derived from the name
    l.entities.emplace_back(to_u16(MsgType::ListEntitiesSwitchResponse), relay.SerializeAsString());
    relay.set_device_id(5);
    l.entities.emplace_back(to_u16(MsgType::ListEntitiesSwitchResponse), relay.SerializeAsString());
    esphome::api::ListEntitiesSensorResponse temp;
    temp.set_object_id("temperature");
    temp.set_key(3);
    temp.set_name("Temperature");
    temp.set_unit_of_measurement("°C");
    temp.set_accuracy_decimals(1);
    temp.set_device_class("temperature");
    l.entities.emplace_back(to_u16(MsgType::ListEntitiesSensorResponse), temp.SerializeAsString());
    std::function<void(Listing&)> edit;
    {
      std::lock_guard lock(mu_);
      edit = edit_listing_;
    }
    if (edit) edit(l);
    return l;
  }

  // False: close the client.
  bool receive(Client& c) {
    char buf[4096];
    const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
    if (n <= 0) return false;
    std::vector<esphome::Message> in;
    std::string reply;
    auto fed = c.transport->feed(std::string_view(buf, static_cast<std::size_t>(n)), in, reply);
    (void)write_all(c.fd.get(), reply);
    if (!fed) return false;
    for (const auto& m : in) {
      if (!handle(c, m)) return false;
    }
    return true;
  }

  bool handle(Client& c, const esphome::Message& m) {
    if (frozen_) return true;
    switch (static_cast<MsgType>(m.type)) {
      case MsgType::HelloRequest: {
        esphome::api::HelloResponse r;
        r.set_api_version_major(1);
        r.set_api_version_minor(14);
        r.set_server_info("fake 2026.1.0");
        r.set_name(name_);
        send(c, to_u16(MsgType::HelloResponse), r);
        return true;
      }
      case MsgType::DeviceInfoRequest:
        send(c, to_u16(MsgType::DeviceInfoResponse), listing().info);
        return true;
      case MsgType::ListEntitiesRequest:
        for (const auto& [type, bytes] : listing().entities) {
          auto frame = c.transport->encode(type, bytes);
          if (frame && !write_all(c.fd.get(), *frame)) return false;
        }
        send(c, to_u16(MsgType::ListEntitiesDoneResponse), esphome::api::ListEntitiesDoneResponse{});
        return true;
      case MsgType::SubscribeStatesRequest:
        c.subscribed = true;
        send(c, to_u16(MsgType::LightStateResponse), light_state());
        send(c, to_u16(MsgType::SwitchStateResponse), switch_state(0));
        send(c, to_u16(MsgType::SwitchStateResponse), switch_state(5));
        send(c, to_u16(MsgType::SensorStateResponse), sensor_state());
        send(c, to_u16(MsgType::GetTimeRequest), esphome::api::GetTimeRequest{});
        send(c, 9999, esphome::api::PingRequest{});  // a type nobody knows: must be ignored
        return misdeed_at_connect() || misbehave(c);
      case MsgType::GetTimeResponse: {
        esphome::api::GetTimeResponse r;
        if (r.ParseFromString(m.payload) && r.epoch_seconds() > 1'600'000'000U) time_answers_.fetch_add(1);
        return true;
      }
      case MsgType::PingRequest:
        pings_.fetch_add(1);
        send(c, to_u16(MsgType::PingResponse), esphome::api::PingResponse{});
        return true;
      case MsgType::DisconnectRequest: send(c, to_u16(MsgType::DisconnectResponse), esphome::api::DisconnectResponse{}); return false;
      case MsgType::LightCommandRequest: {
        esphome::api::LightCommandRequest r;
        if (!r.ParseFromString(m.payload) || r.key() != 1) return true;
        commands_.fetch_add(1);
        {
          std::lock_guard lock(mu_);
          if (r.has_state()) light_on_ = r.state();
          if (r.has_brightness()) brightness_ = r.brightness();
        }
        if (!silent_) send(c, to_u16(MsgType::LightStateResponse), light_state());
        return true;
      }
      case MsgType::SwitchCommandRequest: {
        esphome::api::SwitchCommandRequest r;
        if (!r.ParseFromString(m.payload) || r.key() != 2) return true;
        commands_.fetch_add(1);
        {
          std::lock_guard lock(mu_);
          (r.device_id() == 5 ? porch_relay_ : relay_) = r.state();
        }
        if (!silent_) send(c, to_u16(MsgType::SwitchStateResponse), switch_state(r.device_id()));
        return true;
      }
      default: return true;
    }
  }

  std::string name_;
  std::optional<Psk> psk_;
  ipc::Fd listener_;
  ipc::Fd wake_;
  bool bound_ = false;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> push_{false};
  std::atomic<bool> silent_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<int> pings_{0};
  std::atomic<int> time_answers_{0};
  std::atomic<int> commands_{0};
  std::atomic<int> connections_{0};
  std::atomic<bool> misdeed_now_{false};
  Misdeed misdeed_;  // mu_
  bool misdeed_at_connect_ = false;  // mu_
  std::function<void(Listing&)> edit_listing_;  // mu_
  std::mutex mu_;
  bool light_on_ = false;
  float brightness_ = 1.0F;
  bool relay_ = false;
  bool porch_relay_ = false;
  float temperature_ = 20.0F;
  std::thread thread_;
};

}  // namespace floe::test
