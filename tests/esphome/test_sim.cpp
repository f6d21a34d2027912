// floe-esphome-sim's config and its device behaviour, through a real TCP connection speaking the
// codec (plaintext and Noise) to a Simulator running on its own thread.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "config.hpp"
#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"
#include "sim.hpp"

namespace floe::esphome::sim {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string config_error(const std::string& yaml) {
  auto r = parse_config(yaml);
  return r ? std::string("(parsed)") : r.error().message;
}

TEST(SimConfig, ParsesEveryEntityKind) {
  auto cfg = parse_config(R"(
devices:
  - name: kitchen
    encryption_key: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
    sub_devices: [{id: 3, name: Strip}]
    entities:
      - {type: light, name: Ceiling Light, color_modes: [rgb]}
      - {type: light, name: Strip, device_id: 3}
      - {type: switch, name: Kettle, state: true}
      - {type: sensor, name: Temp, state: 21.5, min: 10, max: 30}
      - {type: binary_sensor, name: Door}
      - {type: text_sensor, name: Status, state: fine}
      - {type: number, name: Setpoint, min: 1, max: 5}
      - {type: select, name: Mode, options: [a, b], state: b}
      - {type: cover, name: Blind}
      - {type: fan, name: Hood}
      - {type: button, name: Reset, entity_category: config}
)");
  ASSERT_TRUE(cfg) << cfg.error().message;
  const auto& d = cfg->devices.at(0);
  EXPECT_TRUE(d.key.has_value());
  EXPECT_EQ(d.mac.size(), 12u);
  ASSERT_EQ(d.entities.size(), 11u);
  EXPECT_EQ(d.entities[0].object_id, "ceiling_light");
  EXPECT_NE(d.entities[0].key, d.entities[1].key);
  EXPECT_EQ(d.entities[1].device_id, 3u);
  EXPECT_TRUE(d.entities[2].state);
  EXPECT_EQ(d.entities[7].text, "b");
  EXPECT_EQ(d.entities[10].entity_category, 1);
}

TEST(SimConfig, ClearErrors) {
  EXPECT_THAT(config_error("devices: [{name: a, entities: [{type: toaster, name: t}]}]"),
              HasSubstr("unknown entity type 'toaster'"));
  EXPECT_THAT(config_error("devices: [{name: a, encryption_key: abc}]"), HasSubstr("device 'a'"));
  EXPECT_THAT(config_error("devices: [{name: a}, {name: a}]"), HasSubstr("used twice"));
  EXPECT_THAT(config_error("devices: [{name: a, entities: [{type: select, name: s, options: [x], state: y}]}]"),
              HasSubstr("not among the options"));
  EXPECT_THAT(config_error("devices: [{name: a, entities: [{type: switch, name: s, device_id: 9}]}]"),
              HasSubstr("no sub-device with id 9"));
  EXPECT_THAT(config_error("devices: [{name: a, port: 70000}]"), HasSubstr("out of range"));
  EXPECT_THAT(config_error("[1, 2"), Not(HasSubstr("(parsed)")));
}

TEST(SimConfig, GeneratedDevicesHaveEveryKind) {
  const auto cfg = generate_config(2, std::nullopt);
  ASSERT_EQ(cfg.devices.size(), 2u);
  for (auto kind : {Kind::kLight, Kind::kSwitch, Kind::kSensor, Kind::kBinarySensor, Kind::kTextSensor, Kind::kNumber,
                    Kind::kSelect, Kind::kCover, Kind::kFan, Kind::kButton}) {
    EXPECT_TRUE(std::any_of(cfg.devices[0].entities.begin(), cfg.devices[0].entities.end(),
                            [&](const EntityConfig& e) { return e.kind == kind; }))
        << to_string(kind);
  }
}

// A client connection to the simulator: blocking socket, bounded waits.
class Client {
 public:
  Client(int port, std::unique_ptr<Transport> t) : t_(std::move(t)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (connected_) send_raw(t_->start());
  }
  ~Client() { ::close(fd_); }
  bool connected() const { return connected_; }
  void send_raw(const std::string& bytes) {
    if (bytes.empty()) return;
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // Reads until the handshake is done (Noise), for up to `bound`.
  bool wait_ready(std::chrono::milliseconds bound = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (!t_->ready() && std::chrono::steady_clock::now() < deadline) {
      if (!read_some(100)) return false;
    }
    return t_->ready();
  }
  template <typename T>
  void send(const T& m) {
    auto f = t_->encode(to_u16(type_of<T>()), serialize(m));
    ASSERT_TRUE(f) << f.error().message;
    send_raw(*f);
  }
  // Next message of `type` (others are kept in `seen`), within `bound`.
  std::optional<Message> expect(MsgType type, std::chrono::milliseconds bound = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    for (;;) {
      for (std::size_t i = 0; i < inbox_.size(); ++i) {
        if (inbox_[i].type == to_u16(type)) {
          Message m = inbox_[i];
          seen_.push_back(m);
          inbox_.erase(inbox_.begin() + static_cast<long>(i));
          return m;
        }
      }
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      if (!read_some(100)) return std::nullopt;
    }
  }
  std::size_t reads() const { return reads_; }
  std::size_t inbox_size() const { return inbox_.size(); }
  const std::string& last_error() const { return error_; }
  bool eof() const { return eof_; }

  bool read_some(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return true;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    ++reads_;
    std::string reply;
    auto r = t_->feed(std::string_view(buf, static_cast<std::size_t>(n)), inbox_, reply);
    if (!r) {
      error_ = r.error().message;
      return false;
    }
    send_raw(reply);
    return true;
  }

 private:
  int fd_ = -1;
  bool connected_ = false, eof_ = false;
  std::unique_ptr<Transport> t_;
  std::vector<Message> inbox_, seen_;
  std::string error_;
  std::size_t reads_ = 0;
};

class SimDevice : public ::testing::Test {
 protected:
  void start(const std::string& yaml) {
    auto cfg = parse_config(yaml);
    ASSERT_TRUE(cfg) << cfg.error().message;
    auto s = Simulator::create(std::move(*cfg));
    ASSERT_TRUE(s) << s.error().message;
    sim_ = std::move(*s);
    port_ = first_port();
    thread_ = std::thread([this] { result_ = sim_->run(false); });
  }
  // The port of the first device, from the simulator's JSON line.
  int first_port() {
    const auto j = sim_->ports_json();
    const auto at = j.find("\"port\":");
    return std::stoi(j.substr(at + 7));
  }
  void TearDown() override {
    if (sim_) {
      sim_->stop();
      thread_.join();
      EXPECT_TRUE(result_);
    }
  }
  std::unique_ptr<Simulator> sim_;
  std::thread thread_;
  Result<void> result_;
  int port_ = 0;
};

constexpr const char* kKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

void hello(Client& c) {
  api::HelloRequest h;
  h.set_client_info("test_sim");
  h.set_api_version_major(1);
  h.set_api_version_minor(14);
  c.send(h);
  auto r = c.expect(MsgType::HelloResponse);
  ASSERT_TRUE(r);
  api::HelloResponse resp;
  ASSERT_TRUE(parse(r->payload, resp));
  EXPECT_EQ(resp.api_version_major(), 1u);
  EXPECT_EQ(resp.api_version_minor(), 14u);
}

TEST_F(SimDevice, FullSessionOverNoise) {
  start(std::string("sensor_interval_ms: 0\ndevices:\n  - name: node\n    encryption_key: ") + kKey + R"(
    sub_devices: [{id: 2, name: Sub}]
    entities:
      - {type: light, name: Lamp}
      - {type: switch, name: Relay, device_id: 2}
      - {type: select, name: Mode, options: [a, b]}
)");
  Client c(port_, Transport::noise_client(*decode_psk(kKey)));
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.wait_ready()) << c.last_error();
  hello(c);
  c.send(api::DeviceInfoRequest{});
  auto info = c.expect(MsgType::DeviceInfoResponse);
  ASSERT_TRUE(info);
  api::DeviceInfoResponse di;
  ASSERT_TRUE(parse(info->payload, di));
  EXPECT_EQ(di.name(), "node");
  ASSERT_EQ(di.devices_size(), 1);
  EXPECT_EQ(di.devices(0).device_id(), 2u);

  c.send(api::ListEntitiesRequest{});
  ASSERT_TRUE(c.expect(MsgType::ListEntitiesDoneResponse));
  auto sw_list = c.expect(MsgType::ListEntitiesSwitchResponse);
  ASSERT_TRUE(sw_list);
  api::ListEntitiesSwitchResponse sw;
  ASSERT_TRUE(parse(sw_list->payload, sw));
  EXPECT_EQ(sw.device_id(), 2u);

  c.send(api::SubscribeStatesRequest{});
  ASSERT_TRUE(c.expect(MsgType::LightStateResponse));
  ASSERT_TRUE(c.expect(MsgType::SwitchStateResponse));
  ASSERT_TRUE(c.expect(MsgType::GetTimeRequest));
  api::GetTimeResponse t;
  t.set_epoch_seconds(1700000000);
  c.send(t);

  // A command for the sub-device's switch, device_id echoed: the new state comes back.
  api::SwitchCommandRequest cmd;
  cmd.set_key(sw.key());
  cmd.set_state(true);
  cmd.set_device_id(2);
  c.send(cmd);
  auto st = c.expect(MsgType::SwitchStateResponse);
  ASSERT_TRUE(st);
  api::SwitchStateResponse ss;
  ASSERT_TRUE(parse(st->payload, ss));
  EXPECT_TRUE(ss.state());
  EXPECT_EQ(ss.device_id(), 2u);

  // An invalid select option is ignored, as firmware does; a ping still answers after it.
  api::SelectCommandRequest bad;
  bad.set_key(12345);
  bad.set_state("zzz");
  c.send(bad);
  c.send(api::PingRequest{});
  ASSERT_TRUE(c.expect(MsgType::PingResponse));

  c.send(api::DisconnectRequest{});
  ASSERT_TRUE(c.expect(MsgType::DisconnectResponse));
  while (c.read_some(1000)) {
  }
  EXPECT_TRUE(c.eof());
}

TEST_F(SimDevice, EntityListIsBatched) {
  start("devices:\n  - name: many\n    entities:\n" + [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += "      - {type: switch, name: s" + std::to_string(i) + "}\n";
    return s;
  }());
  Client c(port_, Transport::plaintext());
  hello(c);
  const auto before = c.reads();
  c.send(api::ListEntitiesRequest{});
  ASSERT_TRUE(c.expect(MsgType::ListEntitiesDoneResponse));
  // 41 frames of the list: the simulator writes them together, so they arrive in far fewer reads
  // (TCP may still split a write; one frame per read would mean no batching at all).
  EXPECT_LT(c.reads() - before, 41u);
  EXPECT_EQ(c.inbox_size(), 40u);
}

TEST_F(SimDevice, MessagesBeforeHelloCloseTheConnection) {
  start("devices:\n  - name: strict\n    entities: [{type: switch, name: s}]\n");
  Client c(port_, Transport::plaintext());
  c.send(api::ListEntitiesRequest{});
  while (c.read_some(1000)) {
  }
  EXPECT_TRUE(c.eof());
}

TEST_F(SimDevice, PlaintextClientOnAnEncryptedDeviceIsToldEncryptionIsExpected) {
  start(std::string("devices:\n  - name: secret\n    encryption_key: ") + kKey + "\n");
  Client c(port_, Transport::plaintext());
  api::HelloRequest h;
  c.send(h);
  while (c.read_some(1000)) {
  }
  EXPECT_THAT(c.last_error(), HasSubstr("device expects encryption but no key configured"));
}

TEST_F(SimDevice, GarbageGetsAClosedConnectionAndTheDeviceKeepsServing) {
  start("devices:\n  - name: robust\n    entities: [{type: switch, name: s}]\n");
  {
    Client junk(port_, Transport::plaintext());
    junk.send_raw(std::string("\x00\xff\xff\xff\xff\xff\xff", 7));
    while (junk.read_some(1000)) {
    }
    EXPECT_TRUE(junk.eof());
  }
  Client c(port_, Transport::plaintext());
  hello(c);
}

}  // namespace
}  // namespace floe::esphome::sim
