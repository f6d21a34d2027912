#include "sim.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"
#include "floe/ipc/fd.hpp"

namespace floe::esphome::sim {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::uint32_t kApiMajor = 1;
constexpr std::uint32_t kApiMinor = 14;
constexpr std::size_t kMaxPendingOutput = 8u << 20;  // a client this far behind is dropped

// The live state of one entity; which fields matter depends on its kind.
struct EntityState {
  bool on = false;
  float brightness = 1.0f;
  float red = 1.0f, green = 1.0f, blue = 1.0f, white = 0.0f;
  float color_temperature = 300.0f;
  int color_mode = 0;
  std::string effect;
  float value = 0.0f;  // sensor, number, cover position
  float tilt = 0.0f;
  std::string text;  // text_sensor, select, fan preset
  bool oscillating = false;
  int speed_level = 1;
  int direction = 0;
};

struct Entity {
  EntityConfig cfg;
  EntityState st;
};

struct Device;

struct Connection {
  Device* device = nullptr;
  ipc::Fd fd;
  std::string peer;
  std::unique_ptr<Transport> transport;
  std::string out;  // bytes not yet written
  bool hello = false;
  bool subscribed = false;
  bool time_sent = false;
  bool closing = false;  // close once `out` is flushed
  bool dead = false;
  bool want_write = false;
  Clock::time_point last_rx = Clock::now();
  bool ping_outstanding = false;
};

struct Device {
  DeviceConfig cfg;
  std::size_t index = 0;  // in the config's device list
  ipc::Fd listener;
  std::uint16_t port = 0;
  std::vector<Entity> entities;
};

std::string encode_or_log(Connection& c, std::uint16_t type, const google::protobuf::MessageLite& m) {
  auto frame = c.transport->encode(type, serialize(m));
  if (!frame) {
    spdlog::warn("{}: cannot encode {}: {}", c.peer, type_name(type).value_or("?"), frame.error().message);
    return {};
  }
  return *frame;
}

template <typename T>
void queue(Connection& c, const T& m) {
  c.out += encode_or_log(c, to_u16(type_of<T>()), m);
}

float round_to(float v, int decimals) {
  const float f = std::pow(10.0f, static_cast<float>(std::clamp(decimals, 0, 6)));
  return std::round(v * f) / f;
}

}  // namespace

struct Simulator::Impl {
  SimConfig cfg;
  std::vector<std::unique_ptr<Device>> devices;
  ipc::Fd epoll;
  ipc::Fd wake;  // eventfd: stop()
  ipc::Fd signals;
  std::map<int, std::unique_ptr<Connection>> conns;
  std::atomic<bool> stopping{false};
  std::mt19937 rng{std::random_device{}()};
  Clock::time_point next_sensor_tick;
  CommandHook on_command;
  std::mutex injected_mu;  // guards `injected` (inject() runs on any thread)
  std::vector<std::pair<std::size_t, Message>> injected;

  // Commands made at the device itself (inject()): applied on the loop thread, no client involved.
  void apply_injected() {
    std::vector<std::pair<std::size_t, Message>> batch;
    {
      std::lock_guard lock(injected_mu);
      batch.swap(injected);
    }
    for (auto& [index, m] : batch) {
      Connection local;
      local.device = devices[index].get();
      local.peer = "(at the device)";
      command(local, m);
    }
  }

  // epoll data: listeners and control fds are tagged by fd value; connections by their fd too.
  Result<void> add_fd(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return sys_error("epoll_ctl(ADD)");
    return {};
  }

  Result<void> bind_device(Device& d) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return sys_error("socket");
    d.listener = ipc::Fd(fd);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(d.cfg.port);
    if (::inet_pton(AF_INET, cfg.host.c_str(), &addr.sin_addr) != 1)
      return logic_error("esphome-sim.bind", fmt::format("host '{}' is not an IPv4 address", cfg.host));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      return sys_errorf("bind", "device '{}' port {}", d.cfg.name, d.cfg.port);
    if (::listen(fd, 64) != 0) return sys_error("listen");
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    d.port = ntohs(addr.sin_port);
    return add_fd(fd, EPOLLIN);
  }

  void init_states(Device& d) {
    for (const auto& ec : d.cfg.entities) {
      Entity e{ec, {}};
      e.st.on = ec.state;
      e.st.value = ec.value;
      e.st.text = ec.text;
      e.st.color_mode = ec.color_modes.empty() ? 0 : ec.color_modes.front();
      if (ec.kind == Kind::kSensor || ec.kind == Kind::kNumber) e.st.value = std::clamp(ec.value, ec.min, ec.max);
      if (ec.kind == Kind::kCover) e.st.value = std::clamp(ec.value, 0.0f, 1.0f);
      d.entities.push_back(std::move(e));
    }
  }

  // ---- messages the device sends ----------------------------------------------------------------

  void queue_entity_list(Connection& c, const Entity& e) {
    const auto& x = e.cfg;
    const auto common = [&](auto& m) {
      m.set_object_id(x.object_id);
      m.set_key(x.key);
      m.set_name(x.name);
      m.set_icon(x.icon);
      m.set_entity_category(static_cast<api::EntityCategory>(x.entity_category));
      m.set_device_id(x.device_id);
    };
    switch (x.kind) {
      case Kind::kLight: {
        api::ListEntitiesLightResponse m;
        common(m);
        for (int mode : x.color_modes) {
          m.add_supported_color_modes(static_cast<api::ColorMode>(mode));
          // The pre-1.6 capability flags, which older clients still read.
          if (mode != api::COLOR_MODE_ON_OFF && mode != api::COLOR_MODE_UNKNOWN) m.set_legacy_supports_brightness(true);
          if (mode >= api::COLOR_MODE_RGB) m.set_legacy_supports_rgb(true);
          if (mode == api::COLOR_MODE_WHITE || mode == api::COLOR_MODE_RGB_WHITE) m.set_legacy_supports_white_value(true);
          if (mode == api::COLOR_MODE_COLOR_TEMPERATURE || mode == api::COLOR_MODE_COLD_WARM_WHITE ||
              mode == api::COLOR_MODE_RGB_COLOR_TEMPERATURE || mode == api::COLOR_MODE_RGB_COLD_WARM_WHITE)
            m.set_legacy_supports_color_temperature(true);
        }
        m.set_min_mireds(x.min_mireds);
        m.set_max_mireds(x.max_mireds);
        for (const auto& ef : x.effects) m.add_effects(ef);
        queue(c, m);
        break;
      }
      case Kind::kSwitch: {
        api::ListEntitiesSwitchResponse m;
        common(m);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
      case Kind::kSensor: {
        api::ListEntitiesSensorResponse m;
        common(m);
        m.set_unit_of_measurement(x.unit);
        m.set_accuracy_decimals(x.accuracy_decimals);
        m.set_device_class(x.device_class);
        m.set_state_class(api::STATE_CLASS_MEASUREMENT);
        queue(c, m);
        break;
      }
      case Kind::kBinarySensor: {
        api::ListEntitiesBinarySensorResponse m;
        common(m);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
      case Kind::kTextSensor: {
        api::ListEntitiesTextSensorResponse m;
        common(m);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
      case Kind::kNumber: {
        api::ListEntitiesNumberResponse m;
        common(m);
        m.set_min_value(x.min);
        m.set_max_value(x.max);
        m.set_step(x.step);
        m.set_unit_of_measurement(x.unit);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
      case Kind::kSelect: {
        api::ListEntitiesSelectResponse m;
        common(m);
        for (const auto& o : x.options) m.add_options(o);
        queue(c, m);
        break;
      }
      case Kind::kCover: {
        api::ListEntitiesCoverResponse m;
        common(m);
        m.set_supports_position(x.supports_position);
        m.set_supports_tilt(x.supports_tilt);
        m.set_supports_stop(true);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
      case Kind::kFan: {
        api::ListEntitiesFanResponse m;
        common(m);
        m.set_supports_oscillation(x.supports_oscillation);
        m.set_supports_speed(true);
        m.set_supports_direction(x.supports_direction);
        m.set_supported_speed_count(x.speed_count);
        for (const auto& p : x.preset_modes) m.add_supported_preset_modes(p);
        queue(c, m);
        break;
      }
      case Kind::kButton: {
        api::ListEntitiesButtonResponse m;
        common(m);
        m.set_device_class(x.device_class);
        queue(c, m);
        break;
      }
    }
  }

  // Buttons have no state: false.
  bool queue_state(Connection& c, const Entity& e) {
    const auto& x = e.cfg;
    const auto& s = e.st;
    switch (x.kind) {
      case Kind::kLight: {
        api::LightStateResponse m;
        m.set_key(x.key);
        m.set_state(s.on);
        m.set_brightness(s.brightness);
        m.set_color_mode(static_cast<api::ColorMode>(s.color_mode));
        m.set_color_brightness(1.0f);
        m.set_red(s.red);
        m.set_green(s.green);
        m.set_blue(s.blue);
        m.set_white(s.white);
        m.set_color_temperature(s.color_temperature);
        m.set_effect(s.effect);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kSwitch: {
        api::SwitchStateResponse m;
        m.set_key(x.key);
        m.set_state(s.on);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kSensor: {
        api::SensorStateResponse m;
        m.set_key(x.key);
        m.set_state(s.value);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kBinarySensor: {
        api::BinarySensorStateResponse m;
        m.set_key(x.key);
        m.set_state(s.on);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kTextSensor: {
        api::TextSensorStateResponse m;
        m.set_key(x.key);
        m.set_state(s.text);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kNumber: {
        api::NumberStateResponse m;
        m.set_key(x.key);
        m.set_state(s.value);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kSelect: {
        api::SelectStateResponse m;
        m.set_key(x.key);
        m.set_state(s.text);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kCover: {
        api::CoverStateResponse m;
        m.set_key(x.key);
        m.set_legacy_state(s.value > 0.0f ? 0 : 1);
        m.set_position(s.value);
        m.set_tilt(s.tilt);
        m.set_current_operation(api::COVER_OPERATION_IDLE);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kFan: {
        api::FanStateResponse m;
        m.set_key(x.key);
        m.set_state(s.on);
        m.set_oscillating(s.oscillating);
        m.set_direction(static_cast<api::FanDirection>(s.direction));
        m.set_speed_level(s.speed_level);
        m.set_preset_mode(s.text);
        m.set_device_id(x.device_id);
        queue(c, m);
        return true;
      }
      case Kind::kButton:
        return false;
    }
    return false;
  }

  // A state change goes to every subscribed client of the device, as firmware does.
  void publish(Device& d, const Entity& e) {
    for (auto& [fd, c] : conns) {
      if (c->device != &d || !c->subscribed || c->dead || c->closing) continue;
      if (queue_state(*c, e)) flush(*c);
    }
  }

  // ---- commands -------------------------------------------------------------------------------

  Entity* find(Device& d, Kind kind, std::uint32_t key, std::uint32_t device_id) {
    for (auto& e : d.entities)
      if (e.cfg.kind == kind && e.cfg.key == key && e.cfg.device_id == device_id) return &e;
    spdlog::warn("{}: command for unknown {} key {} device_id {}", d.cfg.name, to_string(kind), key, device_id);
    return nullptr;
  }

  template <typename T>
  bool parse_or_log(Connection& c, const Message& m, T& out) {
    if (parse(m.payload, out)) return true;
    spdlog::warn("{}: {}: undecodable {} ({} bytes), ignored", c.device->cfg.name, c.peer,
                 type_name(m.type).value_or("?"), m.payload.size());
    return false;
  }

  void command(Connection& c, const Message& m) {
    Device& d = *c.device;
    switch (static_cast<MsgType>(m.type)) {
      case MsgType::LightCommandRequest: {
        api::LightCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kLight, r.key(), r.device_id());
        if (e == nullptr) return;
        auto& s = e->st;
        if (r.has_state()) s.on = r.state();
        if (r.has_brightness()) s.brightness = std::clamp(r.brightness(), 0.0f, 1.0f);
        if (r.has_color_mode()) s.color_mode = r.color_mode();
        if (r.has_rgb()) {
          s.red = std::clamp(r.red(), 0.0f, 1.0f);
          s.green = std::clamp(r.green(), 0.0f, 1.0f);
          s.blue = std::clamp(r.blue(), 0.0f, 1.0f);
        }
        if (r.has_white()) s.white = std::clamp(r.white(), 0.0f, 1.0f);
        if (r.has_color_temperature())
          s.color_temperature = std::clamp(r.color_temperature(), e->cfg.min_mireds, e->cfg.max_mireds);
        if (r.has_effect()) s.effect = r.effect();
        spdlog::info("{}: light '{}' -> {} brightness {:.2f}", d.cfg.name, e->cfg.name, s.on ? "on" : "off", s.brightness);
        publish(d, *e);
        return;
      }
      case MsgType::SwitchCommandRequest: {
        api::SwitchCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kSwitch, r.key(), r.device_id());
        if (e == nullptr) return;
        e->st.on = r.state();
        spdlog::info("{}: switch '{}' -> {}", d.cfg.name, e->cfg.name, e->st.on ? "on" : "off");
        publish(d, *e);
        return;
      }
      case MsgType::NumberCommandRequest: {
        api::NumberCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kNumber, r.key(), r.device_id());
        if (e == nullptr) return;
        if (std::isnan(r.state())) {
          spdlog::warn("{}: number '{}': NaN ignored", d.cfg.name, e->cfg.name);
          return;
        }
        e->st.value = std::clamp(r.state(), e->cfg.min, e->cfg.max);
        spdlog::info("{}: number '{}' -> {}", d.cfg.name, e->cfg.name, e->st.value);
        publish(d, *e);
        return;
      }
      case MsgType::SelectCommandRequest: {
        api::SelectCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kSelect, r.key(), r.device_id());
        if (e == nullptr) return;
        const auto& opts = e->cfg.options;
        if (std::find(opts.begin(), opts.end(), r.state()) == opts.end()) {
          // Firmware logs and keeps its state; no answer.
          spdlog::warn("{}: select '{}': '{}' is not an option", d.cfg.name, e->cfg.name, r.state());
          return;
        }
        e->st.text = r.state();
        spdlog::info("{}: select '{}' -> {}", d.cfg.name, e->cfg.name, e->st.text);
        publish(d, *e);
        return;
      }
      case MsgType::CoverCommandRequest: {
        api::CoverCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kCover, r.key(), r.device_id());
        if (e == nullptr) return;
        if (r.has_legacy_command() && r.legacy_command() != 2) e->st.value = r.legacy_command() == 0 ? 1.0f : 0.0f;
        if (r.has_position()) e->st.value = std::clamp(r.position(), 0.0f, 1.0f);
        if (r.has_tilt()) e->st.tilt = std::clamp(r.tilt(), 0.0f, 1.0f);
        spdlog::info("{}: cover '{}' -> position {:.2f} tilt {:.2f}{}", d.cfg.name, e->cfg.name, e->st.value,
                     e->st.tilt, r.stop() ? " (stop)" : "");
        publish(d, *e);
        return;
      }
      case MsgType::FanCommandRequest: {
        api::FanCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kFan, r.key(), r.device_id());
        if (e == nullptr) return;
        if (r.has_state()) e->st.on = r.state();
        if (r.has_speed_level()) e->st.speed_level = std::clamp(r.speed_level(), 0, e->cfg.speed_count);
        if (r.has_oscillating()) e->st.oscillating = r.oscillating();
        if (r.has_direction()) e->st.direction = r.direction();
        if (r.has_preset_mode()) e->st.text = r.preset_mode();
        spdlog::info("{}: fan '{}' -> {} speed {}", d.cfg.name, e->cfg.name, e->st.on ? "on" : "off", e->st.speed_level);
        publish(d, *e);
        return;
      }
      case MsgType::ButtonCommandRequest: {
        api::ButtonCommandRequest r;
        if (!parse_or_log(c, m, r)) return;
        Entity* e = find(d, Kind::kButton, r.key(), r.device_id());
        if (e != nullptr) spdlog::info("{}: button '{}' pressed", d.cfg.name, e->cfg.name);
        return;
      }
      default:
        spdlog::debug("{}: {}: ignoring message type {}", d.cfg.name, c.peer, m.type);
    }
  }

  // ---- one client message ----------------------------------------------------------------------

  void handle(Connection& c, const Message& m) {
    Device& d = *c.device;
    const auto type = static_cast<MsgType>(m.type);
    if (!c.hello && type != MsgType::HelloRequest && type != MsgType::PingRequest &&
        type != MsgType::DisconnectRequest) {
      spdlog::warn("{}: {}: {} before Hello, closing", d.cfg.name, c.peer, type_name(m.type).value_or("message"));
      c.dead = true;
      return;
    }
    switch (type) {
      case MsgType::HelloRequest: {
        api::HelloRequest r;
        if (!parse_or_log(c, m, r)) {
          c.dead = true;
          return;
        }
        spdlog::info("{}: {}: hello from '{}' (api {}.{})", d.cfg.name, c.peer, r.client_info(), r.api_version_major(),
                     r.api_version_minor());
        api::HelloResponse resp;
        resp.set_api_version_major(kApiMajor);
        resp.set_api_version_minor(kApiMinor);
        resp.set_server_info(fmt::format("floe-esphome-sim ({})", d.cfg.name));
        resp.set_name(d.cfg.name);
        queue(c, resp);
        c.hello = true;
        return;
      }
      case MsgType::AuthenticationRequest: {
        // Legacy clients send an (empty) password; the simulator has none.
        api::AuthenticationResponse resp;
        queue(c, resp);
        return;
      }
      case MsgType::DeviceInfoRequest: {
        api::DeviceInfoResponse resp;
        resp.set_name(d.cfg.name);
        std::string mac;
        for (std::size_t i = 0; i < d.cfg.mac.size(); i += 2) {
          if (i) mac.push_back(':');
          mac += static_cast<char>(std::toupper(d.cfg.mac[i]));
          mac += static_cast<char>(std::toupper(d.cfg.mac[i + 1]));
        }
        resp.set_mac_address(mac);
        resp.set_esphome_version("2025.11.0");
        resp.set_compilation_time("Nov 27 2026, 12:00:00");
        resp.set_model(d.cfg.model);
        resp.set_manufacturer("floe");
        resp.set_friendly_name(d.cfg.friendly_name);
        resp.set_suggested_area(d.cfg.suggested_area);
        resp.set_api_encryption_supported(d.cfg.key.has_value());
        for (const auto& s : d.cfg.sub_devices) {
          auto* sd = resp.add_devices();
          sd->set_device_id(s.id);
          sd->set_name(s.name);
          sd->set_area_id(s.area_id);
        }
        queue(c, resp);
        return;
      }
      case MsgType::ListEntitiesRequest: {
        for (const auto& e : d.entities) queue_entity_list(c, e);
        queue(c, api::ListEntitiesDoneResponse{});
        return;
      }
      case MsgType::SubscribeStatesRequest: {
        c.subscribed = true;
        for (const auto& e : d.entities) (void)queue_state(c, e);
        if (cfg.send_time_requests && !c.time_sent) {
          queue(c, api::GetTimeRequest{});
          c.time_sent = true;
        }
        return;
      }
      case MsgType::PingRequest:
        queue(c, api::PingResponse{});
        return;
      case MsgType::PingResponse:
        return;  // last_rx already moved
      case MsgType::GetTimeResponse: {
        api::GetTimeResponse r;
        if (parse_or_log(c, m, r)) spdlog::info("{}: {}: time is {}", d.cfg.name, c.peer, r.epoch_seconds());
        return;
      }
      case MsgType::DisconnectRequest:
        spdlog::info("{}: {}: client disconnects", d.cfg.name, c.peer);
        queue(c, api::DisconnectResponse{});
        c.closing = true;
        return;
      case MsgType::DisconnectResponse:
        c.dead = true;
        return;
      default:
        if (on_command) on_command(d.index, m);
        command(c, m);
    }
  }

  // ---- sockets --------------------------------------------------------------------------------

  void accept_on(Device& d) {
    for (;;) {
      sockaddr_in addr{};
      socklen_t len = sizeof addr;
      int fd = ::accept4(d.listener.get(), reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          spdlog::warn("{}: accept: {}", d.cfg.name, std::strerror(errno));
        return;
      }
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto c = std::make_unique<Connection>();
      c->device = &d;
      c->fd = ipc::Fd(fd);
      char ip[INET_ADDRSTRLEN] = {};
      ::inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof ip);
      c->peer = fmt::format("{}:{}", ip, ntohs(addr.sin_port));
      c->transport = d.cfg.key ? Transport::noise_server(*d.cfg.key, d.cfg.name, d.cfg.mac)
                               : Transport::plaintext(Transport::Side::kServer);
      if (!add_fd(fd, EPOLLIN)) continue;  // UniqueFd closes it
      spdlog::info("{}: client {} connected ({})", d.cfg.name, c->peer, d.cfg.key ? "encrypted" : "plaintext");
      conns.emplace(fd, std::move(c));
    }
  }

  // Writes what it can; the rest waits for EPOLLOUT.
  void flush(Connection& c) {
    while (!c.out.empty()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        c.out.erase(0, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      spdlog::info("{}: {}: send failed: {}", c.device->cfg.name, c.peer, std::strerror(errno));
      c.dead = true;
      return;
    }
    if (c.out.size() > kMaxPendingOutput) {
      spdlog::warn("{}: {}: client does not read ({} bytes pending), dropping", c.device->cfg.name, c.peer, c.out.size());
      c.dead = true;
      return;
    }
    const bool want = !c.out.empty();
    if (want != c.want_write) {
      epoll_event ev{};
      ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
      ev.data.fd = c.fd.get();
      ::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
      c.want_write = want;
    }
    if (c.out.empty() && c.closing) c.dead = true;
  }

  void readable(Connection& c) {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
      if (n == 0) {
        spdlog::info("{}: client {} disconnected", c.device->cfg.name, c.peer);
        c.dead = true;
        return;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        spdlog::info("{}: {}: recv: {}", c.device->cfg.name, c.peer, std::strerror(errno));
        c.dead = true;
        return;
      }
      c.last_rx = Clock::now();
      c.ping_outstanding = false;
      std::vector<Message> msgs;
      std::string reply;
      auto r = c.transport->feed(std::string_view(buf, static_cast<std::size_t>(n)), msgs, reply);
      c.out += reply;
      for (const auto& m : msgs) {
        if (c.dead || c.closing) break;
        handle(c, m);
      }
      if (!r) {
        spdlog::warn("{}: client {}: {}; closing", c.device->cfg.name, c.peer, r.error().message);
        c.closing = true;  // send the refusal (if any), then close
      }
      if (c.dead || c.closing) break;
    }
    // Everything produced by this read goes out in one write: frames are batched.
    if (!c.dead) flush(c);
  }

  void close_dead() {
    for (auto it = conns.begin(); it != conns.end();) {
      if (it->second->dead) {
        ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, it->first, nullptr);
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  }

  // ---- timers -------------------------------------------------------------------------------------

  void sensor_tick() {
    std::normal_distribution<float> step(0.0f, 1.0f);
    std::uniform_real_distribution<float> coin(0.0f, 1.0f);
    for (auto& d : devices) {
      for (auto& e : d->entities) {
        bool changed = false;
        if (e.cfg.kind == Kind::kSensor) {
          const float span = std::max(e.cfg.max - e.cfg.min, 1e-3f);
          float v = e.st.value + step(rng) * span * 0.02f + span * 0.001f;
          v = round_to(std::clamp(v, e.cfg.min, e.cfg.max), e.cfg.accuracy_decimals);
          changed = v != e.st.value;
          e.st.value = v;
        } else if (e.cfg.kind == Kind::kBinarySensor && coin(rng) < 0.3f) {
          e.st.on = !e.st.on;
          changed = true;
        }
        if (changed) publish(*d, e);
      }
    }
  }

  void housekeeping(Clock::time_point now) {
    for (auto& [fd, c] : conns) {
      if (c->dead || c->closing) continue;
      const auto idle = now - c->last_rx;
      if (idle >= std::chrono::milliseconds(cfg.drop_idle_ms)) {
        spdlog::warn("{}: {}: silent for {} s, dropping", c->device->cfg.name, c->peer,
                     std::chrono::duration_cast<std::chrono::seconds>(idle).count());
        c->dead = true;
      } else if (c->transport->ready() && !c->ping_outstanding && idle >= std::chrono::milliseconds(cfg.ping_idle_ms)) {
        queue(*c, api::PingRequest{});
        c->ping_outstanding = true;
        flush(*c);
      }
    }
  }

  Result<void> run(bool handle_signals) {
    if (handle_signals) {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGINT);
      sigaddset(&set, SIGTERM);
      if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) return sys_error("sigprocmask");
      int sfd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
      if (sfd < 0) return sys_error("signalfd");
      signals = ipc::Fd(sfd);
      FLOE_TRY(add_fd(sfd, EPOLLIN));
    }
    const auto sensor_period = std::chrono::milliseconds(cfg.sensor_interval_ms);
    next_sensor_tick = Clock::now() + sensor_period;
    auto next_housekeeping = Clock::now() + 200ms;
    std::vector<epoll_event> events(64);
    while (!stopping.load(std::memory_order_acquire)) {
      auto now = Clock::now();
      auto deadline = next_housekeeping;
      if (cfg.sensor_interval_ms > 0) deadline = std::min(deadline, next_sensor_tick);
      const auto wait_ms = std::max<long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count());
      const int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), static_cast<int>(wait_ms));
      if (n < 0 && errno != EINTR) return sys_error("epoll_wait");
      for (int i = 0; i < n; ++i) {
        const int fd = events[static_cast<std::size_t>(i)].data.fd;
        const auto ev = events[static_cast<std::size_t>(i)].events;
        if (fd == wake.get()) {
          std::uint64_t v;
          (void)!::read(fd, &v, sizeof v);
          apply_injected();
          continue;
        }
        if (signals && fd == signals.get()) {
          signalfd_siginfo si{};
          (void)!::read(fd, &si, sizeof si);
          spdlog::info("signal {}: stopping", si.ssi_signo);
          stopping.store(true, std::memory_order_release);
          continue;
        }
        bool was_listener = false;
        for (auto& d : devices) {
          if (d->listener.get() == fd) {
            accept_on(*d);
            was_listener = true;
          }
        }
        if (was_listener) continue;
        auto it = conns.find(fd);
        if (it == conns.end()) continue;
        Connection& c = *it->second;
        if (ev & (EPOLLERR | EPOLLHUP)) {
          if (!(ev & EPOLLIN)) {
            c.dead = true;
            continue;
          }
        }
        if ((ev & EPOLLOUT) && !c.dead) flush(c);
        if ((ev & EPOLLIN) && !c.dead && !c.closing) readable(c);
        if (c.closing && !c.dead) flush(c);
      }
      now = Clock::now();
      if (cfg.sensor_interval_ms > 0 && now >= next_sensor_tick) {
        sensor_tick();
        next_sensor_tick += sensor_period;
        if (next_sensor_tick < now) next_sensor_tick = now + sensor_period;
      }
      if (now >= next_housekeeping) {
        housekeeping(now);
        next_housekeeping = now + 200ms;
      }
      close_dead();
    }
    spdlog::info("stopped ({} clients open)", conns.size());
    return {};
  }
};

Simulator::Simulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Simulator::~Simulator() = default;

Result<std::unique_ptr<Simulator>> Simulator::create(SimConfig config) {
  FLOE_TRY(finalize(config));
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(config);
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return sys_error("epoll_create1");
  impl->epoll = ipc::Fd(ep);
  int wfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wfd < 0) return sys_error("eventfd");
  impl->wake = ipc::Fd(wfd);
  FLOE_TRY(impl->add_fd(wfd, EPOLLIN));
  for (const auto& dc : impl->cfg.devices) {
    auto d = std::make_unique<Device>();
    d->cfg = dc;
    d->index = impl->devices.size();
    FLOE_TRY(impl->bind_device(*d));
    impl->init_states(*d);
    spdlog::info("device '{}' on {}:{} ({}, {} entities)", d->cfg.name, impl->cfg.host, d->port,
                 d->cfg.key ? "encrypted" : "plaintext", d->entities.size());
    impl->devices.push_back(std::move(d));
  }
  return std::unique_ptr<Simulator>(new Simulator(std::move(impl)));
}

std::string Simulator::ports_json() const {
  nlohmann::json devs = nlohmann::json::array();
  for (const auto& d : impl_->devices)
    devs.push_back({{"name", d->cfg.name}, {"port", d->port}, {"encrypted", d->cfg.key.has_value()}});
  return nlohmann::json{{"devices", devs}}.dump();
}

Result<void> Simulator::run(bool handle_signals) { return impl_->run(handle_signals); }

void Simulator::on_command(CommandHook hook) { impl_->on_command = std::move(hook); }

void Simulator::inject(std::size_t device, Message command) {
  if (device >= impl_->devices.size()) return;
  {
    std::lock_guard lock(impl_->injected_mu);
    impl_->injected.emplace_back(device, std::move(command));
  }
  const std::uint64_t one = 1;
  (void)!::write(impl_->wake.get(), &one, sizeof one);
}

void Simulator::stop() noexcept {
  impl_->stopping.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  (void)!::write(impl_->wake.get(), &one, sizeof one);
}

}  // namespace floe::esphome::sim
